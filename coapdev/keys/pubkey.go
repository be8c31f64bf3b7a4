package keys

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// Bounds ParsePublicKey enforces on any RSA public key it returns.
const (
	minParsedBits = 1024
	maxParsedBits = 4096
)

// ParsePublicKey parses an RSA public key in any of the forms users and the
// reference cloud keep them in: PEM "PUBLIC KEY" (SPKI, the reference
// layout), PEM "RSA PUBLIC KEY" (PKCS#1), or raw DER of either (a Photon's
// 162-byte SPKI, a server's 294-byte one). In PEM input the first block of
// one of those two types is used and other blocks are skipped. The key must
// be RSA with e = 65537 and 1024 to 4096 bits; device keys are further
// restricted by CheckDeviceKey where they are stored. Every error wraps
// ErrBadKey.
func ParsePublicKey(b []byte) (*rsa.PublicKey, error) {
	trimmed := bytes.TrimSpace(b)
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		rest := trimmed
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				return nil, fmt.Errorf("%w: no \"PUBLIC KEY\" or \"RSA PUBLIC KEY\" PEM block", ErrBadKey)
			}
			switch blk.Type {
			case "PUBLIC KEY":
				return parsePKIX(blk.Bytes)
			case "RSA PUBLIC KEY":
				return parsePKCS1(blk.Bytes)
			}
		}
	}
	if pub, err := parsePKIX(b); err == nil {
		return pub, nil
	}
	if pub, err := parsePKCS1(b); err == nil {
		return pub, nil
	}
	return nil, fmt.Errorf("%w: neither PEM nor DER SubjectPublicKeyInfo / PKCS#1", ErrBadKey)
}

func parsePKIX(der []byte) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T, want an RSA key", ErrBadKey, k)
	}
	return checkParsed(pub)
}

func parsePKCS1(der []byte) (*rsa.PublicKey, error) {
	pub, err := x509.ParsePKCS1PublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return checkParsed(pub)
}

func checkParsed(pub *rsa.PublicKey) (*rsa.PublicKey, error) {
	if n := pub.N.BitLen(); n < minParsedBits || n > maxParsedBits {
		return nil, fmt.Errorf("%w: %d-bit modulus, want %d to %d", ErrBadKey, n, minParsedBits, maxParsedBits)
	}
	if pub.E != PublicExponent {
		return nil, fmt.Errorf("%w: public exponent %d, want %d", ErrBadKey, pub.E, PublicExponent)
	}
	return pub, nil
}

// PublicPEM returns pub as a PEM "PUBLIC KEY" block (SPKI), the format of
// the reference cloud's <id>.pub.pem and default_key.pub.pem files.
func PublicPEM(pub *rsa.PublicKey) ([]byte, error) {
	return publicPEM(pub)
}

func publicPEM(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
