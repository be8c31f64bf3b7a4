package handshake

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// generated is handshake_generated.json.
type generated struct {
	ServerPEM      string `json:"server_private_key_pkcs1_pem"`
	ServerDER      string `json:"server_public_key_spki_der"`
	DevicePrivDER  string `json:"device_private_key_pkcs1_der"`
	DevicePubDER   string `json:"device_public_key_spki_der"`
	DeviceID       string `json:"device_id_hex"`
	Nonce          string `json:"step1_server_nonce_40"`
	CorePlain      string `json:"step2_core_plaintext_52"`
	CoreCipher     string `json:"step2_core_ciphertext_256"`
	PhotonPlain    string `json:"step2_photon_plaintext_214"`
	PhotonCipher   string `json:"step2_photon_ciphertext_256"`
	Material       string `json:"step3_session_material_40"`
	Key            string `json:"aes_key"`
	IV             string `json:"aes_iv"`
	Salt           string `json:"salt"`
	SessionCipher  string `json:"step3_session_ciphertext_128"`
	HMAC           string `json:"step3_hmac_sha1_20"`
	Signature      string `json:"step3_signature_256"`
	Deterministic  bool   `json:"signature_deterministic"`
	ServerSends384 string `json:"step3_server_sends_384"`
	Hello          struct {
		ID int `json:"coap_message_id"`
	} `json:"step4_device_hello_photon"`
}

// photonSession is session_fixture_photon07.json / photon08.json.
type photonSession struct {
	Firmware      string `json:"firmware"`
	ServerPEM     string `json:"server_private_key_pem"`
	ServerDER     string `json:"server_public_key_spki_der"`
	DevicePrivDER string `json:"device_private_key_pkcs1_der"`
	DevicePubDER  string `json:"device_public_key_spki_der"`
	DeviceID      string `json:"device_id_12"`
	Nonce         string `json:"server_nonce_40"`
	Block2        string `json:"handshake_block2_ciphertext_256"`
	Block2Plain   string `json:"handshake_block2_plaintext_214"`
	Blob          string `json:"server_handshake_blob_384"`
	Material      string `json:"session_material_40"`
	Key           string `json:"aes_key"`
	IV            string `json:"aes_iv"`
	Salt          string `json:"salt"`
	HMAC          string `json:"hmac_sha1"`
	HelloRule     struct {
		Counter    int  `json:"counter_from_salt"`
		HelloID    int  `json:"hello_message_id"`
		FirstToken *int `json:"first_token_from_salt"`
	} `json:"hello_message_id_from_salt"`
}

// coreSession is session_fixture_core.json.
type coreSession struct {
	DevicePrivDER string `json:"device_private_key_pkcs1_der"`
	ServerDER     string `json:"server_public_key_spki_der"`
	DeviceID      string `json:"device_id_12"`
	Nonce         string `json:"server_nonce_40"`
	Blob          string `json:"server_handshake_blob_384"`
	Material      string `json:"session_material_40"`
	Key           string `json:"aes_key"`
	IV            string `json:"aes_iv"`
	Salt          string `json:"salt"`
	HMAC          string `json:"hmac_sha1"`
	Verifies      bool   `json:"signature_verifies"`
	FirstID       int    `json:"core_initial_message_id_from_salt"`
	FirstToken    int    `json:"core_initial_token_from_salt"`
}

// fixtureDevice is handshake_fixture_device.json.
type fixtureDevice struct {
	A struct {
		DevicePrivDER string `json:"device_private_key_pkcs1_der"`
		ServerDER     string `json:"server_public_key_spki_der"`
		Encrypted     string `json:"encrypted_session_material_128"`
		Material      string `json:"session_material_40"`
		Key           string `json:"session_key_16"`
		IV            string `json:"session_iv_16"`
		Salt          string `json:"session_salt_8"`
		HMAC          string `json:"hmac_sha1_20"`
		Signature     string `json:"server_signature_256"`
		RawPublicOp   string `json:"signature_raw_rsa_public_op_256"`
		Verifies      bool   `json:"signature_verifies"`
		DeviceID      string `json:"device_id_12"`
	} `json:"handshake_fixture_A"`
}

// need fails the test if any of the vector fields is empty, so a renamed
// field cannot silently skip a check.
func need(t testing.TB, file string, fields ...string) {
	t.Helper()
	for i, f := range fields {
		if f == "" {
			t.Fatalf("%s: required field %d is empty", file, i)
		}
	}
}

func loadFixture(t testing.TB, v *fixtureDevice) {
	t.Helper()
	vectors.Load(t, "handshake_fixture_device.json", v)
	need(t, "handshake_fixture_device.json", v.A.DevicePrivDER)
}

func loadGenerated(t testing.TB) generated {
	t.Helper()
	var v generated
	vectors.Load(t, "handshake_generated.json", &v)
	need(t, "handshake_generated.json", v.ServerPEM, v.ServerDER, v.DevicePrivDER, v.DevicePubDER, v.DeviceID,
		v.Nonce, v.CorePlain, v.CoreCipher, v.PhotonPlain, v.PhotonCipher, v.Material, v.Key, v.IV, v.Salt,
		v.SessionCipher, v.HMAC, v.Signature, v.ServerSends384)
	return v
}

func privPEM(t testing.TB, s string) *rsa.PrivateKey {
	t.Helper()
	blk, _ := pem.Decode([]byte(s))
	if blk == nil {
		t.Fatal("no PEM block in the vector")
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func privDER(t testing.TB, s string) *rsa.PrivateKey {
	t.Helper()
	k, err := x509.ParsePKCS1PrivateKey(vectors.Hex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pubDER(t testing.TB, s string) *rsa.PublicKey {
	t.Helper()
	k, err := keys.ParsePublicKey(vectors.Hex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func deviceID(t testing.TB, s string) keys.DeviceID {
	t.Helper()
	var id keys.DeviceID
	b := vectors.Hex(t, s)
	if len(b) != len(id) {
		t.Fatalf("device id %q: %d bytes", s, len(b))
	}
	copy(id[:], b)
	return id
}

// fixedRand returns the concatenation of parts, then EOF: a Rand that
// makes the nonce and the session material of a Server call known.
func fixedRand(parts ...[]byte) io.Reader {
	return bytes.NewReader(bytes.Join(parts, nil))
}

// staticLookup is a Lookup that knows one device (or none: nil key).
func staticLookup(id keys.DeviceID, key *rsa.PublicKey) Lookup {
	return func(got keys.DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
		if got != id || key == nil {
			return nil, keys.ErrUnknownDevice
		}
		if offered != nil && !offered.Equal(key) {
			return nil, keys.ErrKeyMismatch
		}
		return key, nil
	}
}

// pipe returns the two ends of a net.Pipe with a deadline on both, so a
// bug fails the test instead of hanging it, closed at cleanup.
func pipe(t testing.TB) (server, device net.Conn) {
	t.Helper()
	server, device = net.Pipe()
	dl := time.Now().Add(20 * time.Second)
	_ = server.SetDeadline(dl)
	_ = device.SetDeadline(dl)
	t.Cleanup(func() {
		_ = server.Close()
		_ = device.Close()
	})
	return server, device
}

// serveAgainst runs Server on one end of a pipe and peer on the other, in
// its own goroutine, and waits for both. The server end is closed when
// Server returns, so a peer that drains to EOF ends.
func serveAgainst(t *testing.T, cfg ServerConfig, peer func(c net.Conn) error) (*Session, error, error) {
	t.Helper()
	sc, dc := pipe(t)
	done := make(chan error, 1)
	go func() {
		defer dc.Close()
		done <- peer(dc)
	}()
	s, err := Server(sc, cfg)
	_ = sc.Close()
	return s, err, <-done
}

// rawDevice is a peer that reads the nonce, writes what block(nonce)
// returns, then drains whatever the server answers until it closes.
func rawDevice(block func(nonce []byte) []byte) func(c net.Conn) error {
	return func(c net.Conn) error {
		nonce := make([]byte, NonceSize)
		if _, err := io.ReadFull(c, nonce); err != nil {
			return err
		}
		if _, err := c.Write(block(nonce)); err != nil {
			return err
		}
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, io.ErrClosedPipe) {
			err = nil
		}
		return err
	}
}

// encryptTo encrypts pt to pub (PKCS#1 v1.5) or fails the test.
func encryptTo(t testing.TB, pub *rsa.PublicKey, pt []byte) []byte {
	t.Helper()
	ct, err := encryptPKCS1v15(rand.Reader, pub, pt)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
