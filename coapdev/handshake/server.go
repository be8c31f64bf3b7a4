package handshake

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"io"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// Lookup returns the trusted public key of device id, given the key the
// device offered in block 2 (nil for a Core). (*keys.Store).Lookup fits.
// Its errors are returned wrapped, so errors.Is(err, keys.ErrUnknownDevice)
// and keys.ErrKeyMismatch work on Server's error.
type Lookup func(id keys.DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error)

// ServerConfig configures Server.
type ServerConfig struct {
	// Key is the server private key (RSA-2048, e = 65537). Required.
	Key *rsa.PrivateKey
	// Lookup finds the device key. Required.
	Lookup Lookup
	// Rand supplies the 40-byte nonce, then the 40-byte session material;
	// nil means crypto/rand.Reader. Tests inject fixed bytes. (The random
	// padding of the RSA encryption always comes from crypto/rand since Go
	// 1.26.)
	Rand io.Reader
}

// Server runs the server side of the handshake (spark-protocol.md §2) on
// rw, the freshly accepted connection: it writes the 40-byte nonce, reads
// exactly 256 bytes, decrypts and checks them (§2.2), looks the device up,
// then writes C ‖ SIG (384 bytes) in one Write and returns the Session.
//
// Deadlines are the caller's: set one on the conn before calling Server
// (a read or write error ends the handshake). Server does three RSA
// operations, about 2.2 ms of CPU (BenchmarkRSAOps); bound concurrent calls.
//
// Errors: ErrShortRead (wrapping the read error), ErrDecrypt, ErrBadNonce;
// after the id is known a *DeviceError wrapping ErrBadKey, the Lookup error
// (keys.ErrUnknownDevice, keys.ErrKeyMismatch, ...) or a write error. On
// every error the caller closes the connection without a reply: the
// protocol has no error message. To keep block 2 from being a padding
// oracle the caller must treat ErrDecrypt and ErrBadNonce the same on the
// wire (same close, no earlier or later), see the package doc.
func Server(rw io.ReadWriter, cfg ServerConfig) (*Session, error) {
	if cfg.Key == nil || cfg.Lookup == nil {
		return nil, errors.New("handshake: server config needs Key and Lookup")
	}
	rnd := cfg.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	var buf [NonceSize + Block2Size + MaterialSize]byte
	defer clear(buf[:]) // the session material is secret; the Session keeps its own copy
	nonce := buf[:NonceSize]
	block := buf[NonceSize : NonceSize+Block2Size]
	material := buf[NonceSize+Block2Size:]
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("handshake: nonce: %w", err)
	}
	if _, err := rw.Write(nonce); err != nil {
		return nil, fmt.Errorf("handshake: write nonce: %w", err)
	}
	if err := readFull(rw, block, "block 2"); err != nil {
		return nil, err
	}
	id, offered, err := ParseBlock2(cfg.Key, nonce, block)
	switch {
	case errors.Is(err, ErrBadKey):
		return nil, &DeviceError{ID: id, Err: err}
	case err != nil:
		return nil, err
	}
	kind := Core
	if offered != nil {
		kind = Photon
	}
	devPub, err := cfg.Lookup(id, offered)
	if err != nil {
		return nil, &DeviceError{ID: id, Err: fmt.Errorf("lookup: %w", err)}
	}
	if err := keys.CheckDeviceKey(devPub); err != nil {
		return nil, &DeviceError{ID: id, Err: fmt.Errorf("%w: stored key: %w", ErrBadKey, err)}
	}
	if _, err := io.ReadFull(rnd, material); err != nil {
		return nil, fmt.Errorf("handshake: session material: %w", err)
	}
	out, err := SealSessionKey(rnd, cfg.Key, devPub, material)
	if err != nil {
		return nil, &DeviceError{ID: id, Err: err}
	}
	if _, err := rw.Write(out); err != nil {
		return nil, &DeviceError{ID: id, Err: fmt.Errorf("write session key: %w", err)}
	}
	return newSession(id, kind, offered, material), nil
}

// ParseBlock2 decrypts block 2 with the server key and checks it against
// the nonce (spark-protocol.md §2.2). It returns the device id and, for a
// Photon, the public key it offered (nil for a Core's 52-byte plaintext).
//
//   - Any RSA failure (block not 256 bytes, bad padding) and a plaintext
//     shorter than 52 bytes: ErrDecrypt, one error on one path.
//   - The first 40 bytes differ from nonce (compared in constant time):
//     ErrBadNonce.
//   - Longer than 52 bytes: bytes 52..213 must be a 1024-bit, e = 65537
//     key in the firmware's 162-byte SPKI layout, else ErrBadKey; id is
//     valid with ErrBadKey. Bytes after 214 are ignored, as the reference
//     does.
//
// It does not look the device up. It is safe for concurrent use.
func ParseBlock2(priv *rsa.PrivateKey, nonce []byte, block []byte) (id keys.DeviceID, offered *rsa.PublicKey, err error) {
	pt, derr := decryptPKCS1v15(priv, block)
	// spark-protocol.md §2.1, §7.4: no padding oracle. crypto/rsa checks
	// the padding in constant time and returns only the final verdict. From
	// here the two outcomes an attacker probing the key can produce (padding
	// bad, or padding good with a plaintext that cannot hold our nonce) do
	// the same work: the nonce is compared against the plaintext or, on
	// failure, against a zero buffer of the same size, and the verdicts are
	// combined without branching before the one decision below.
	var zero [CorePlaintextSize]byte
	decOK := 0
	if derr == nil && len(pt) >= CorePlaintextSize {
		decOK = 1
	}
	subject := zero[:]
	if decOK == 1 {
		subject = pt[:CorePlaintextSize]
	}
	nonceOK := subtle.ConstantTimeCompare(subject[:NonceSize], nonce)
	if decOK&nonceOK != 1 {
		if decOK == 0 {
			return id, nil, ErrDecrypt
		}
		return id, nil, ErrBadNonce
	}
	copy(id[:], pt[NonceSize:CorePlaintextSize])
	if len(pt) == CorePlaintextSize {
		return id, nil, nil
	}
	offered, err = parseOffered(pt[CorePlaintextSize:])
	if err != nil {
		return id, nil, err
	}
	return id, offered, nil
}

// parseOffered parses the key a Photon appends to block 2: exactly the
// 162-byte SPKI the firmware builds (§1.2) at the start of tail.
func parseOffered(tail []byte) (*rsa.PublicKey, error) {
	if len(tail) < keys.DeviceDERSize {
		return nil, fmt.Errorf("%w: %d bytes after the id, want %d", ErrBadKey, len(tail), keys.DeviceDERSize)
	}
	der := tail[:keys.DeviceDERSize]
	if !bytes.HasPrefix(der, photonDERHeader) || !bytes.HasSuffix(der, photonDERTrailer) {
		return nil, fmt.Errorf("%w: not the firmware's SPKI layout", ErrBadKey)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrBadKey, k)
	}
	if err := keys.CheckDeviceKey(pub); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return pub, nil
}

// The fixed parts of the Photon's 162-byte SPKI (spark-protocol.md §1.2).
var (
	photonDERHeader = []byte{
		0x30, 0x81, 0x9f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
		0x05, 0x00, 0x03, 0x81, 0x8d, 0x00, 0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00,
	}
	photonDERTrailer = []byte{0x02, 0x03, 0x01, 0x00, 0x01}
)

// SealSessionKey builds the 384-byte step-3 message (spark-protocol.md §2,
// §2.1): C = RSA-encrypt(devPub, material) with PKCS#1 v1.5 type 2
// (128 bytes), then SIG = the server's PKCS#1 v1.5 type-1 "signature" of the
// raw 20-byte HMAC-SHA1(key = material, data = C), with no DigestInfo
// (256 bytes). material must be 40 bytes, devPub a device key
// (keys.CheckDeviceKey) and priv the 2048-bit server key. rand is passed to
// the encryption (crypto/rsa ignores it since Go 1.26); the signature is
// deterministic.
func SealSessionKey(rand io.Reader, priv *rsa.PrivateKey, devPub *rsa.PublicKey, material []byte) ([]byte, error) {
	if len(material) != MaterialSize {
		return nil, fmt.Errorf("handshake: seal session key: material is %d bytes, want %d", len(material), MaterialSize)
	}
	if err := keys.CheckDeviceKey(devPub); err != nil {
		return nil, fmt.Errorf("handshake: seal session key: %w: %w", ErrBadKey, err)
	}
	c, err := encryptPKCS1v15(rand, devPub, material)
	if err != nil {
		return nil, fmt.Errorf("handshake: encrypt session key: %w", err)
	}
	sig, err := rsa.SignPKCS1v15(nil, priv, crypto.Hash(0), sessionMAC(material, c))
	if err != nil {
		return nil, fmt.Errorf("handshake: sign session key: %w", err)
	}
	if len(c) != SessionKeySize || len(sig) != SignatureSize {
		return nil, fmt.Errorf("handshake: seal session key: %d+%d bytes, want %d+%d", len(c), len(sig), SessionKeySize, SignatureSize)
	}
	out := make([]byte, 0, ServerBlobSize)
	out = append(out, c...)
	return append(out, sig...), nil
}

// sessionMAC is HMAC-SHA1(key = material, data = c), the 20 bytes the
// server signs (spark-protocol.md §2.1; SHA-1 is fixed by the firmware).
func sessionMAC(material, c []byte) []byte {
	m := hmac.New(sha1.New, material)
	m.Write(c)
	return m.Sum(nil)
}
