package handshake

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// ClientConfig configures Client, the device side of the handshake.
type ClientConfig struct {
	// ServerKey is the server public key the device was flashed with
	// (2048 bits, e = 65537). Required.
	ServerKey *rsa.PublicKey
	// DeviceKey is the device private key (1024 bits, e = 65537). Required.
	DeviceKey *rsa.PrivateKey
	// DeviceID is the id sent in block 2.
	DeviceID keys.DeviceID
	// Kind selects the block-2 layout: Core (52 bytes) or Photon (214,
	// with the device's SPKI).
	Kind Kind
	// Rand is passed to the RSA encryption of block 2; nil means
	// crypto/rand.Reader. (crypto/rsa ignores it since Go 1.26.)
	Rand io.Reader
}

// Client runs the device side of the handshake on rw, as the firmware
// does (spark-protocol.md §2): it reads the 40-byte nonce, writes block 2
// (nonce ‖ id, plus the 162-byte SPKI for a Photon) encrypted to the server
// key in one Write, reads the 384-byte answer, decrypts the session
// material with the device key and verifies the server's signature over it.
//
// Deadlines are the caller's. Errors: ErrBadKey (unusable keys in cfg),
// ErrShortRead, ErrDecrypt (the session key does not decrypt to 40 bytes),
// ErrBadSignature, or a write error.
func Client(rw io.ReadWriter, cfg ClientConfig) (*Session, error) {
	if cfg.ServerKey == nil || cfg.DeviceKey == nil {
		return nil, errors.New("handshake: client config needs ServerKey and DeviceKey")
	}
	if _, err := keys.PublicDER(cfg.ServerKey); err != nil {
		return nil, fmt.Errorf("handshake: server key: %w: %w", ErrBadKey, err)
	}
	rnd := cfg.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	pt := make([]byte, NonceSize, PhotonPlaintextSize)
	pt = append(pt, cfg.DeviceID[:]...)
	var offered *rsa.PublicKey
	switch cfg.Kind {
	case Core:
		if err := keys.CheckDeviceKey(&cfg.DeviceKey.PublicKey); err != nil {
			return nil, fmt.Errorf("handshake: device key: %w: %w", ErrBadKey, err)
		}
	case Photon:
		// spark-protocol.md §1.2: header ‖ modulus ‖ 02 03 01 00 01, checked
		// against the standard DER by DevicePublicDER.
		der, err := keys.DevicePublicDER(&cfg.DeviceKey.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("handshake: device key: %w: %w", ErrBadKey, err)
		}
		pt = append(pt, der...)
		offered = &cfg.DeviceKey.PublicKey
	default:
		return nil, fmt.Errorf("handshake: client config: unknown %v", cfg.Kind)
	}

	if err := readFull(rw, pt[:NonceSize], "nonce"); err != nil {
		return nil, err
	}
	block, err := encryptPKCS1v15(rnd, cfg.ServerKey, pt)
	if err != nil {
		return nil, fmt.Errorf("handshake: encrypt block 2: %w", err)
	}
	if _, err := rw.Write(block); err != nil {
		return nil, fmt.Errorf("handshake: write block 2: %w", err)
	}
	var blob [ServerBlobSize]byte
	if err := readFull(rw, blob[:], "session key"); err != nil {
		return nil, err
	}
	material, err := OpenSessionKey(cfg.DeviceKey, cfg.ServerKey, blob[:])
	if err != nil {
		return nil, err
	}
	return newSession(cfg.DeviceID, cfg.Kind, offered, material), nil
}

// OpenSessionKey is the device's processing of the 384-byte step-3 blob:
// it decrypts C = blob[0:128] with the device key to the 40-byte material
// (ErrDecrypt otherwise) and verifies SIG = blob[128:384] as a raw PKCS#1
// v1.5 type-1 signature of HMAC-SHA1(material, C) under the server key
// (ErrBadSignature otherwise). It returns the material.
func OpenSessionKey(devKey *rsa.PrivateKey, serverKey *rsa.PublicKey, blob []byte) ([]byte, error) {
	if len(blob) != ServerBlobSize {
		return nil, fmt.Errorf("%w: session key blob is %d bytes, want %d", ErrDecrypt, len(blob), ServerBlobSize)
	}
	c, sig := blob[:SessionKeySize], blob[SessionKeySize:]
	material, err := decryptPKCS1v15(devKey, c)
	if err != nil || len(material) != MaterialSize {
		return nil, ErrDecrypt
	}
	if err := rsa.VerifyPKCS1v15(serverKey, 0, sessionMAC(material, c), sig); err != nil {
		return nil, ErrBadSignature
	}
	return material, nil
}
