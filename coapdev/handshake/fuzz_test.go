package handshake

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// Fuzz modes (the first argument of FuzzParseBlock2).
const (
	fuzzEncrypt  = 1 << iota // data is a plaintext to encrypt, not a raw block
	fuzzNonce                // prefix the plaintext with the right nonce
	fuzzValidKey             // insert a valid device SPKI at offset 52
)

// FuzzParseBlock2 holds ParseBlock2 to its contract with a fixed test key
// (handshake_generated.json) and nonce:
//
//   - any raw input gives nil or one of our errors (ErrDecrypt for any
//     length other than 256), and a nil error means the RSA plaintext really
//     starts with the nonce;
//   - a valid encryption of a fuzzed plaintext parses iff it is ≥ 52 bytes,
//     starts with the nonce and is either exactly 52 bytes or carries a
//     canonical 1024-bit, e = 65537 SPKI at 52..213; the id is recovered
//     exactly (also with ErrBadKey), and so is the offered key.
func FuzzParseBlock2(f *testing.F) {
	v := loadGenerated(f)
	priv := privPEM(f, v.ServerPEM)
	nonce := vectors.Hex(f, v.Nonce)
	devDER := vectors.Hex(f, v.DevicePubDER)
	id := vectors.Hex(f, v.DeviceID)

	f.Add(uint8(0), vectors.Hex(f, v.CoreCipher))
	f.Add(uint8(0), vectors.Hex(f, v.PhotonCipher))
	f.Add(uint8(0), bytes.Repeat([]byte{0xa5}, Block2Size))
	f.Add(uint8(0), []byte{})
	f.Add(uint8(fuzzEncrypt), vectors.Hex(f, v.CorePlain))
	f.Add(uint8(fuzzEncrypt), vectors.Hex(f, v.PhotonPlain))
	f.Add(uint8(fuzzEncrypt|fuzzNonce), id)
	f.Add(uint8(fuzzEncrypt|fuzzNonce|fuzzValidKey), id)
	f.Add(uint8(fuzzEncrypt|fuzzNonce|fuzzValidKey), append(bytes.Clone(id), "trailing"...))
	f.Add(uint8(fuzzEncrypt|fuzzNonce), append(bytes.Clone(id), devDER...))
	f.Add(uint8(fuzzEncrypt|fuzzNonce), append(bytes.Clone(id), devDER[:80]...))
	f.Add(uint8(fuzzEncrypt|fuzzNonce), id[:11])

	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		if mode&fuzzEncrypt == 0 {
			fuzzRaw(t, priv, nonce, data)
			return
		}
		pt := data
		if mode&fuzzNonce != 0 {
			pt = cat(nonce, data)
		}
		if mode&fuzzValidKey != 0 && len(pt) >= CorePlaintextSize {
			pt = cat(pt[:CorePlaintextSize], devDER, pt[CorePlaintextSize:])
		}
		if len(pt) > priv.Size()-11 {
			return // does not fit one PKCS#1 v1.5 block
		}
		block := encryptTo(t, &priv.PublicKey, pt)
		gotID, offered, err := ParseBlock2(priv, nonce, block)
		switch {
		case len(pt) < CorePlaintextSize:
			wantErr(t, err, ErrDecrypt)
			return
		case !bytes.Equal(pt[:NonceSize], nonce):
			wantErr(t, err, ErrBadNonce)
			return
		}
		if !bytes.Equal(gotID[:], pt[NonceSize:CorePlaintextSize]) {
			t.Fatalf("id: got %x, want %x", gotID, pt[NonceSize:CorePlaintextSize])
		}
		var wantKey *rsa.PublicKey
		if len(pt) > CorePlaintextSize {
			wantKey = canonicalDeviceKey(pt[CorePlaintextSize:])
			if wantKey == nil {
				wantErr(t, err, ErrBadKey)
				return
			}
		}
		if err != nil {
			t.Fatalf("got %v for a valid %d-byte plaintext", err, len(pt))
		}
		if (offered == nil) != (wantKey == nil) || (offered != nil && !offered.Equal(wantKey)) {
			t.Fatalf("offered: got %v, want %v", offered, wantKey)
		}
	})
}

func fuzzRaw(t *testing.T, priv *rsa.PrivateKey, nonce, block []byte) {
	id, _, err := ParseBlock2(priv, nonce, block)
	if len(block) != Block2Size {
		wantErr(t, err, ErrDecrypt)
		return
	}
	switch {
	case err == nil:
		pt, derr := decryptPKCS1v15(priv, block)
		if derr != nil || !bytes.HasPrefix(pt, nonce) || !bytes.Equal(pt[NonceSize:CorePlaintextSize], id[:]) {
			t.Fatalf("accepted a block whose plaintext is %x (%v)", pt, derr)
		}
	case errors.Is(err, ErrDecrypt), errors.Is(err, ErrBadNonce), errors.Is(err, ErrBadKey):
	default:
		t.Fatalf("got %v, not one of our errors", err)
	}
}

// canonicalDeviceKey is the fuzz oracle for the offered key, written
// independently of parseOffered: tail[:162] is the canonical DER SPKI of a
// 1024-bit RSA key with e = 65537.
func canonicalDeviceKey(tail []byte) *rsa.PublicKey {
	if len(tail) < keys.DeviceDERSize {
		return nil
	}
	der := tail[:keys.DeviceDERSize]
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() != 1024 || pub.E != 65537 {
		return nil
	}
	if back, err := x509.MarshalPKIXPublicKey(pub); err != nil || !bytes.Equal(back, der) {
		return nil
	}
	return pub
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
}
