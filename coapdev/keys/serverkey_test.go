package keys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

func TestLoadOrCreateServerKeyCreates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "default_key.pem")
	key, created, err := LoadOrCreateServerKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("got created = false for a new file, want true")
	}
	if got := key.N.BitLen(); got != ServerKeyBits {
		t.Errorf("got %d-bit modulus, want %d", got, ServerKeyBits)
	}
	if key.E != PublicExponent {
		t.Errorf("got e = %d, want %d", key.E, PublicExponent)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("got mode %v, want 0600", got)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "RSA PRIVATE KEY" {
		t.Errorf("private key file is not PKCS#1 PEM: %.40q", b)
	}
	pubPath := filepath.Join(dir, "default_key.pub.pem")
	if got := PublicKeyPath(path); got != pubPath {
		t.Errorf("PublicKeyPath: got %s, want %s", got, pubPath)
	}
	pb, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pb)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(&key.PublicKey) {
		t.Error("the .pub.pem key differs from the private key's public key")
	}
	if _, err := PublicDER(pub); err != nil {
		t.Errorf("PublicDER of a generated key: %v", err)
	}
	// No temp files left behind.
	des, _ := os.ReadDir(dir)
	if len(des) != 2 {
		t.Errorf("got %d files in the dir, want 2", len(des))
	}

	again, created, err := LoadOrCreateServerKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("got created = true on the second call, want false")
	}
	if !again.Equal(key) {
		t.Error("the loaded key differs from the created one")
	}
}

func TestLoadOrCreateServerKeyLoads(t *testing.T) {
	v := loadGen(t)
	want := serverKey(t, v)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(want)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		file []byte
	}{
		{"pkcs1", []byte(v.ServerPEM)},
		{"pkcs8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})},
		{"after other blocks", append([]byte(v.DevicePubPEM), v.ServerPEM...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.pem")
			if err := os.WriteFile(path, tt.file, 0o600); err != nil {
				t.Fatal(err)
			}
			got, created, err := LoadOrCreateServerKey(path)
			if err != nil {
				t.Fatal(err)
			}
			if created || !got.Equal(want) {
				t.Errorf("got created=%v equal=%v, want false true", created, got.Equal(want))
			}
		})
	}
}

func TestLoadOrCreateServerKeyRefuses(t *testing.T) {
	v := loadGen(t)
	dev := deviceKey(t, v.DevicePrivDER)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	full := []byte(v.ServerPEM)
	tests := []struct {
		name    string
		file    []byte
		wantMsg string
	}{
		{"1024-bit key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(dev)}), "1024-bit modulus"},
		{"ec key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), "want an RSA key"},
		{"empty", nil, "no \"RSA PRIVATE KEY\""},
		{"garbage", []byte("not a key at all\n"), "no \"RSA PRIVATE KEY\""},
		{"truncated", full[:len(full)/2], "no \"RSA PRIVATE KEY\""},
		{"corrupt body", corruptPEM(t, full), "bad key"},
		{"public key only", []byte(v.DevicePubPEM), "no \"RSA PRIVATE KEY\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.pem")
			if err := os.WriteFile(path, tt.file, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadOrCreateServerKey(path)
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("got %v, want ErrBadKey", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), path) {
				t.Errorf("got %q, want it to name the file and say %q", err, tt.wantMsg)
			}
			b, _ := os.ReadFile(path)
			if !bytes.Equal(b, tt.file) {
				t.Error("a refused key file was modified")
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		_, _, err := LoadOrCreateServerKey(t.TempDir()) // a directory
		if err == nil || errors.Is(err, ErrBadKey) {
			t.Errorf("got %v, want a read error", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		_, _, err := LoadOrCreateServerKey(filepath.Join(t.TempDir(), "no", "k.pem"))
		if err == nil {
			t.Error("got nil error writing into a missing directory")
		}
	})
}

// corruptPEM flips a byte inside the base64 body of a PEM key, keeping it
// valid base64.
func corruptPEM(t *testing.T, b []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(b)
	body := bytes.Clone(blk.Bytes)
	body[4] ^= 0xff // the version/sequence header
	return pem.EncodeToMemory(&pem.Block{Type: blk.Type, Bytes: body})
}

func TestPublicDER(t *testing.T) {
	v := loadGen(t)
	key := serverKey(t, v)
	der, err := PublicDER(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if want := vectors.Hex(t, v.ServerDER); !bytes.Equal(der, want) {
		t.Errorf("got %x, want %x", der, want)
	}
	if len(der) != v.ServerDERLen || len(der) != ServerDERSize {
		t.Errorf("got %d bytes, want %d", len(der), v.ServerDERLen)
	}
	mod := key.N.FillBytes(make([]byte, 256))
	if !bytes.Equal(der[v.ModulusOffset:v.ModulusOffset+256], mod) {
		t.Errorf("modulus is not at offset %d", v.ModulusOffset)
	}

	n := key.N
	tests := []struct {
		name string
		n    *big.Int
		e    int
	}{
		{"2047 bits", new(big.Int).Rsh(n, 1), 65537},
		{"2049 bits", new(big.Int).Lsh(n, 1), 65537},
		{"e=3", n, 3},
		{"1024 bits", deviceKey(t, v.DevicePrivDER).N, 65537},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := PublicDER(newPub(tt.n, tt.e)); !errors.Is(err, ErrBadKey) {
				t.Errorf("got %v, want ErrBadKey", err)
			}
		})
	}
	if _, err := PublicDER(nil); !errors.Is(err, ErrBadKey) {
		t.Errorf("nil key: got %v, want ErrBadKey", err)
	}
}

func TestDevicePublicDER(t *testing.T) {
	v := loadGen(t)
	dev := deviceKey(t, v.DevicePrivDER)
	der, err := DevicePublicDER(&dev.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if want := vectors.Hex(t, v.DevicePubDER); !bytes.Equal(der, want) || len(der) != v.DevicePubLen {
		t.Errorf("got %x, want %x", der, want)
	}
	if _, err := DevicePublicDER(&serverKey(t, v).PublicKey); !errors.Is(err, ErrBadKey) {
		t.Errorf("2048-bit key: got %v, want ErrBadKey", err)
	}
	if _, err := DevicePublicDER(newPub(new(big.Int).Rsh(dev.N, 1), 65537)); !errors.Is(err, ErrBadKey) {
		t.Errorf("1023-bit key: got %v, want ErrBadKey", err)
	}
}

func TestAddressBlock(t *testing.T) {
	domain64 := strings.Repeat("a", 60) + ".com"
	tests := []struct {
		name     string
		host     string
		port     uint16
		wantType byte
		wantAddr []byte
	}{
		{"ipv4", "192.168.1.10", 5683, 0, []byte{192, 168, 1, 10}},
		{"ipv4 default port", "10.0.0.1", 0, 0, []byte{10, 0, 0, 1}},
		{"domain", "spark.example.org", 5683, 1, []byte("spark.example.org")},
		{"domain 64 bytes", domain64, 65535, 1, []byte(domain64)},
		{"one byte domain", "h", 1, 1, []byte("h")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AddressBlock(tt.host, tt.port)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, AddressBlockSize)
			want[0] = tt.wantType
			want[1] = byte(len(tt.wantAddr))
			copy(want[2:], tt.wantAddr)
			binary.BigEndian.PutUint16(want[66:], tt.port)
			if !bytes.Equal(b, want) {
				t.Errorf("got %x, want %x", b, want)
			}
		})
	}
	bad := []struct {
		name string
		host string
	}{
		{"domain 65 bytes", strings.Repeat("b", 61) + ".com"},
		{"empty", ""},
		{"ipv6", "::1"},
		{"ipv4-mapped ipv6", "::ffff:10.0.0.1"},
		{"space", "my host"},
		{"nul", "host\x00"},
		{"non-ascii", "héte.example"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := AddressBlock(tt.host, 5683); !errors.Is(err, ErrBadAddress) {
				t.Errorf("got %v, want ErrBadAddress", err)
			}
		})
	}
}

func TestServerKeyBlob(t *testing.T) {
	v := loadGen(t)
	key := serverKey(t, v)
	blob, err := ServerKeyBlob(&key.PublicKey, "192.168.1.10", 5683)
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) != ServerKeyBlobSize {
		t.Fatalf("got %d bytes, want %d", len(blob), ServerKeyBlobSize)
	}
	if !bytes.Equal(blob[:ServerDERSize], vectors.Hex(t, v.ServerDER)) {
		t.Error("blob does not start with the 294-byte DER")
	}
	if !bytes.Equal(blob[ServerDERSize:384], make([]byte, 384-ServerDERSize)) {
		t.Error("bytes 294..383 are not zero")
	}
	addr, _ := AddressBlock("192.168.1.10", 5683)
	if !bytes.Equal(blob[384:], addr) {
		t.Errorf("address block at 384: got %x, want %x", blob[384:], addr)
	}
	if _, err := ServerKeyBlob(&key.PublicKey, strings.Repeat("x", 65), 5683); !errors.Is(err, ErrBadAddress) {
		t.Errorf("65-byte domain: got %v, want ErrBadAddress", err)
	}
	if _, err := ServerKeyBlob(&deviceKey(t, v.DevicePrivDER).PublicKey, "h", 1); !errors.Is(err, ErrBadKey) {
		t.Errorf("1024-bit key: got %v, want ErrBadKey", err)
	}
}
