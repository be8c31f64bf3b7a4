package keys

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// genVectors holds the fields of handshake_generated.json these tests use.
type genVectors struct {
	ServerPEM     string `json:"server_private_key_pkcs1_pem"`
	ServerDER     string `json:"server_public_key_spki_der"`
	ServerDERLen  int    `json:"server_public_key_spki_der_len"`
	ModulusOffset int    `json:"server_public_modulus_offset_in_der"`
	DevicePrivDER string `json:"device_private_key_pkcs1_der"`
	DevicePubDER  string `json:"device_public_key_spki_der"`
	DevicePubLen  int    `json:"device_public_key_spki_der_len"`
	DevicePubPEM  string `json:"device_public_key_spki_pem"`
	DeviceID      string `json:"device_id_hex"`
}

// fixtureVectors holds the fields of handshake_fixture_device.json used here.
type fixtureVectors struct {
	A struct {
		DevicePrivDER string `json:"device_private_key_pkcs1_der"`
		ServerDER     string `json:"server_public_key_spki_der"`
		DeviceID      string `json:"device_id_12"`
	} `json:"handshake_fixture_A"`
}

func loadGen(t testing.TB) genVectors {
	t.Helper()
	var v genVectors
	vectors.Load(t, "handshake_generated.json", &v)
	if v.ServerPEM == "" || v.DevicePrivDER == "" || v.DevicePubDER == "" || v.DeviceID == "" {
		t.Fatal("handshake_generated.json: missing key fields")
	}
	return v
}

func serverKey(t testing.TB, v genVectors) *rsa.PrivateKey {
	t.Helper()
	k, err := parseServerKey([]byte(v.ServerPEM))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func deviceKey(t testing.TB, hexDER string) *rsa.PrivateKey {
	t.Helper()
	k, err := x509.ParsePKCS1PrivateKey(vectors.Hex(t, hexDER))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// otherDeviceKeys returns two more device keys from the vectors, distinct
// from the handshake_generated one (generating RSA keys in tests is slow).
func otherDeviceKeys(t testing.TB) (*rsa.PublicKey, *rsa.PublicKey) {
	t.Helper()
	var f fixtureVectors
	vectors.Load(t, "handshake_fixture_device.json", &f)
	var p struct {
		DevicePrivDER string `json:"device_private_key_pkcs1_der"`
	}
	vectors.Load(t, "session_fixture_photon07.json", &p)
	return &deviceKey(t, f.A.DevicePrivDER).PublicKey, &deviceKey(t, p.DevicePrivDER).PublicKey
}

func mustID(t testing.TB, s string) DeviceID {
	t.Helper()
	id, err := ParseDeviceID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// newPub returns a public key with modulus n and exponent e, for shape
// checks (no private key needed).
func newPub(n *big.Int, e int) *rsa.PublicKey {
	return &rsa.PublicKey{N: n, E: e}
}

func pkcs1PEM(pub *rsa.PublicKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(pub)})
}
