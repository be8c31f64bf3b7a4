package keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

func TestParsePublicKey(t *testing.T) {
	v := loadGen(t)
	dev := &deviceKey(t, v.DevicePrivDER).PublicKey
	srv := &serverKey(t, v).PublicKey
	spki := vectors.Hex(t, v.DevicePubDER)
	pkcs1 := x509.MarshalPKCS1PublicKey(dev)
	tests := []struct {
		name string
		in   []byte
		want any
	}{
		{"pem spki (vector)", []byte(v.DevicePubPEM), dev},
		{"pem spki with whitespace", []byte("\n\n  " + v.DevicePubPEM + "\n\n"), dev},
		{"pem pkcs1", pkcs1PEM(dev), dev},
		{"der spki 162 (vector)", spki, dev},
		{"der pkcs1", pkcs1, dev},
		{"server der 294 (vector)", vectors.Hex(t, v.ServerDER), srv},
		{"pem after a private key block", append([]byte(v.ServerPEM), v.DevicePubPEM...), dev},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePublicKey(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tt.want) {
				t.Error("parsed key differs")
			}
		})
	}

	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	e3, _ := x509.MarshalPKIXPublicKey(newPub(dev.N, 3))
	small, _ := x509.MarshalPKIXPublicKey(newPub(new(big.Int).Rsh(dev.N, 600), 65537))
	huge, _ := x509.MarshalPKIXPublicKey(newPub(new(big.Int).Lsh(dev.N, 4000), 65537))
	bad := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"garbage", []byte("hello")},
		{"truncated der", spki[:100]},
		{"der with trailing byte", append(append([]byte{}, spki...), 0)},
		{"pem private key only", []byte(v.ServerPEM)},
		{"pem bad base64", []byte("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n")},
		{"pem garbage body", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})},
		{"ec key", ecDER},
		{"e=3", e3},
		{"424 bits", small},
		{"5024 bits", huge},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePublicKey(tt.in); !errors.Is(err, ErrBadKey) {
				t.Errorf("got %v, want ErrBadKey", err)
			}
		})
	}
}

// FuzzParsePublicKey: errors are ErrBadKey; an accepted key is RSA with
// e = 65537 and 1024..4096 bits, and survives DER and PEM round trips.
func FuzzParsePublicKey(f *testing.F) {
	v := loadGen(f)
	dev := &deviceKey(f, v.DevicePrivDER).PublicKey
	f.Add([]byte(v.DevicePubPEM))
	f.Add(vectors.Hex(f, v.DevicePubDER))
	f.Add(vectors.Hex(f, v.ServerDER))
	f.Add(x509.MarshalPKCS1PublicKey(dev))
	f.Add(pkcs1PEM(dev))
	f.Add([]byte(v.ServerPEM))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := ParsePublicKey(b)
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("got %v, want ErrBadKey", err)
			}
			return
		}
		if n := pub.N.BitLen(); n < minParsedBits || n > maxParsedBits || pub.E != PublicExponent {
			t.Fatalf("accepted a %d-bit key with e = %d", n, pub.E)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePublicKey(der)
		if err != nil || !back.Equal(pub) {
			t.Fatalf("DER round trip: %v", err)
		}
		p, err := PublicPEM(pub)
		if err != nil {
			t.Fatal(err)
		}
		back, err = ParsePublicKey(p)
		if err != nil || !back.Equal(pub) {
			t.Fatalf("PEM round trip: %v", err)
		}
	})
}
