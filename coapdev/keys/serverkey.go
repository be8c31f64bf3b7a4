package keys

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Sizes fixed by the firmware (spark-protocol.md §1).
const (
	ServerKeyBits     = 2048  // server RSA modulus, top bit set
	DeviceKeyBits     = 1024  // device RSA modulus
	PublicExponent    = 65537 // both device stacks hard-code e = 0x10001
	ServerDERSize     = 294   // SPKI DER of the server public key
	DeviceDERSize     = 162   // SPKI DER of a device public key (Photon block 2)
	AddressBlockSize  = 128   // server address block, §1.5
	ServerKeyBlobSize = 512   // DER ‖ zero pad to 384 ‖ address block
	MaxDomainLen      = 64    // longest domain name the address block holds
)

// addressOffset is where the address block starts in the server key area
// (spark-protocol.md §1.5: server_public_key + 384).
const addressOffset = 384

// Address block layout (spark-protocol.md §1.5).
const (
	addrTypeIPv4   = 0  // off 0: type, IPv4
	addrTypeDomain = 1  // off 0: type, domain name
	addrPortOffset = 66 // u16 BE port
	addrDataOffset = 2  // IPv4 (4 bytes BE) or ASCII domain (<= 64 bytes)
)

// maxGenerateAttempts bounds the "regenerate until the top bit is set" loop.
// crypto/rsa always returns a modulus of exactly the requested size, so one
// attempt is the norm; the loop guards the invariant the firmware relies on.
const maxGenerateAttempts = 8

// LoadOrCreateServerKey returns the server private key stored as PEM at path.
// If path does not exist it generates an RSA-2048 key with e = 65537 and the
// modulus top bit set, writes it as PKCS#1 PEM ("RSA PRIVATE KEY") with mode
// 0600 (temp file + rename), writes the public key as PEM SPKI beside it
// (<name>.pub.pem, where <name> is path without a trailing ".pem"; mode 0644)
// and reports created = true, like the reference cloud's default_key.pem and
// default_key.pub.pem.
//
// An existing file may hold PKCS#1 ("RSA PRIVATE KEY") or PKCS#8
// ("PRIVATE KEY") PEM. A key that is not RSA, not 2048 bits or not e = 65537
// is refused with an error wrapping ErrBadKey: the devices read the modulus
// at a fixed offset of a 294-byte DER and ignore the exponent (§1.1).
// Generation takes about a second of CPU; the function is not meant to be
// called concurrently for the same path.
func LoadOrCreateServerKey(path string) (key *rsa.PrivateKey, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := parseServerKey(b)
		if err != nil {
			return nil, false, fmt.Errorf("keys: server key %s: %w", path, err)
		}
		return key, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("keys: read server key: %w", err)
	}
	key, err = generateServerKey()
	if err != nil {
		return nil, false, err
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pub, err := publicPEM(&key.PublicKey)
	if err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(path, priv, 0o600); err != nil {
		return nil, false, fmt.Errorf("keys: write server key: %w", err)
	}
	if err := writeFileAtomic(PublicKeyPath(path), pub, 0o644); err != nil {
		return nil, false, fmt.Errorf("keys: write server public key: %w", err)
	}
	return key, true, nil
}

// PublicKeyPath returns where LoadOrCreateServerKey writes the public key
// for the private key file path: "default_key.pem" → "default_key.pub.pem".
func PublicKeyPath(path string) string {
	return strings.TrimSuffix(path, ".pem") + ".pub.pem"
}

func generateServerKey() (*rsa.PrivateKey, error) {
	for range maxGenerateAttempts {
		key, err := rsa.GenerateKey(rand.Reader, ServerKeyBits)
		if err != nil {
			return nil, fmt.Errorf("keys: generate server key: %w", err)
		}
		if checkServerKey(&key.PublicKey) == nil {
			return key, nil
		}
	}
	return nil, fmt.Errorf("keys: generate server key: no %d-bit modulus after %d attempts", ServerKeyBits, maxGenerateAttempts)
}

// parseServerKey decodes the first private-key PEM block of b.
func parseServerKey(b []byte) (*rsa.PrivateKey, error) {
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("%w: no \"RSA PRIVATE KEY\" or \"PRIVATE KEY\" PEM block", ErrBadKey)
		}
		var key *rsa.PrivateKey
		switch blk.Type {
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
			}
			key = k
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("%w: %T, want an RSA key", ErrBadKey, k)
			}
			key = rk
		default:
			continue
		}
		if err := checkServerKey(&key.PublicKey); err != nil {
			return nil, err
		}
		key.Precompute()
		return key, nil
	}
}

// checkServerKey enforces §1.1: 2048 bits with the top bit set, e = 65537.
func checkServerKey(pub *rsa.PublicKey) error {
	if pub == nil || pub.N == nil {
		return fmt.Errorf("%w: no key", ErrBadKey)
	}
	if n := pub.N.BitLen(); n != ServerKeyBits {
		return fmt.Errorf("%w: %d-bit modulus, want %d bits with the top bit set", ErrBadKey, n, ServerKeyBits)
	}
	if pub.E != PublicExponent {
		return fmt.Errorf("%w: public exponent %d, want %d", ErrBadKey, pub.E, PublicExponent)
	}
	return nil
}

// CheckDeviceKey reports whether pub has the shape every device key has
// (spark-protocol.md §1.2): 1024 bits, top bit set, e = 65537. Errors wrap
// ErrBadKey.
func CheckDeviceKey(pub *rsa.PublicKey) error {
	if pub == nil || pub.N == nil {
		return fmt.Errorf("%w: no key", ErrBadKey)
	}
	if n := pub.N.BitLen(); n != DeviceKeyBits {
		return fmt.Errorf("%w: %d-bit device key, want %d", ErrBadKey, n, DeviceKeyBits)
	}
	if pub.E != PublicExponent {
		return fmt.Errorf("%w: device key exponent %d, want %d", ErrBadKey, pub.E, PublicExponent)
	}
	return nil
}

// PublicDER returns the server public key as the 294-byte DER
// SubjectPublicKeyInfo a device stores (spark-protocol.md §1.1). A key that
// would not give exactly that layout (not 2048 bits with the top bit set, or
// e ≠ 65537) is an error wrapping ErrBadKey.
func PublicDER(pub *rsa.PublicKey) ([]byte, error) {
	if err := checkServerKey(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	if len(der) != ServerDERSize || !bytes.Equal(der[:len(serverDERHeader)], serverDERHeader) {
		return nil, fmt.Errorf("%w: DER is %d bytes, want %d with the modulus at offset %d", ErrBadKey, len(der), ServerDERSize, len(serverDERHeader))
	}
	return der, nil
}

// serverDERHeader is the fixed prefix of the 294-byte server SPKI; the
// device reads the modulus right after it, at offset 33 (§1.1).
var serverDERHeader = []byte{
	0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
	0x01, 0x05, 0x00, 0x03, 0x82, 0x01, 0x0f, 0x00, 0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00,
}

// deviceDERHeader and deviceDERTrailer frame the 128-byte modulus in the
// 162-byte device SPKI a Photon builds (spark-protocol.md §1.2).
var (
	deviceDERHeader = []byte{
		0x30, 0x81, 0x9f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
		0x05, 0x00, 0x03, 0x81, 0x8d, 0x00, 0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00,
	}
	deviceDERTrailer = []byte{0x02, 0x03, 0x01, 0x00, 0x01}
)

// DevicePublicDER returns a device public key in the 162-byte SPKI form a
// Photon sends in block 2, built the way the firmware builds it: the fixed
// 29-byte header, the 128-byte modulus, then 02 03 01 00 01 (§1.2). It checks
// that the result equals the standard DER encoding. Keys other than 1024-bit,
// e = 65537 are an error wrapping ErrBadKey.
func DevicePublicDER(pub *rsa.PublicKey) ([]byte, error) {
	if err := CheckDeviceKey(pub); err != nil {
		return nil, err
	}
	der := make([]byte, DeviceDERSize)
	n := copy(der, deviceDERHeader)
	pub.N.FillBytes(der[n : n+DeviceKeyBits/8])
	copy(der[n+DeviceKeyBits/8:], deviceDERTrailer)
	std, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	if !bytes.Equal(der, std) {
		return nil, fmt.Errorf("%w: device SPKI does not match the firmware layout", ErrBadKey)
	}
	return der, nil
}

// AddressBlock returns the 128-byte server address block of
// spark-protocol.md §1.5 for host and port:
//
//	off 0   u8   type: 0 = IPv4, 1 = domain name
//	off 1   u8   length: 4 for IPv4, else the domain length (1..64)
//	off 2   ..   IPv4 as 4 bytes (a.b.c.d) or the ASCII domain, no NUL
//	off 66  u16  port, big-endian (0 means "the default", 5683)
//	off 68  ..   padding
//
// host is an IPv4 address in dotted form, or else a domain name of 1 to 64
// printable ASCII bytes (no spaces); IPv6 and anything else is an error
// wrapping ErrBadAddress. Padding choice: every byte the firmware does not
// read (the rest of the 64-byte address field and bytes 68..127) is zero. The
// firmware reads only length bytes of the address field and the two port
// bytes, so the value does not matter to it; zero is deterministic, so two
// blobs for the same key and address are equal byte for byte. The "unset"
// type 0xFF is never produced.
func AddressBlock(host string, port uint16) ([]byte, error) {
	blk := make([]byte, AddressBlockSize)
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return nil, fmt.Errorf("%w: %q: only IPv4 addresses fit the address block", ErrBadAddress, host)
		}
		a := ip.As4()
		blk[0] = addrTypeIPv4
		blk[1] = byte(len(a))
		copy(blk[addrDataOffset:], a[:])
	} else {
		if err := checkDomain(host); err != nil {
			return nil, err
		}
		blk[0] = addrTypeDomain
		blk[1] = byte(len(host))
		copy(blk[addrDataOffset:], host)
	}
	binary.BigEndian.PutUint16(blk[addrPortOffset:], port)
	return blk, nil
}

func checkDomain(host string) error {
	if len(host) == 0 || len(host) > MaxDomainLen {
		return fmt.Errorf("%w: domain %q is %d bytes, want 1 to %d", ErrBadAddress, clip(host), len(host), MaxDomainLen)
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: domain %q has byte 0x%02x at %d", ErrBadAddress, host, c, i)
		}
	}
	return nil
}

// ServerKeyBlob returns the 512-byte file a device's server-key area is
// flashed with (spark-protocol.md §1.5): the 294-byte DER of PublicDER, zero
// bytes up to offset 384, then AddressBlock(host, port).
func ServerKeyBlob(pub *rsa.PublicKey, host string, port uint16) ([]byte, error) {
	der, err := PublicDER(pub)
	if err != nil {
		return nil, err
	}
	addr, err := AddressBlock(host, port)
	if err != nil {
		return nil, err
	}
	blob := make([]byte, ServerKeyBlobSize)
	copy(blob, der)
	copy(blob[addressOffset:], addr)
	return blob, nil
}

// writeFileAtomic writes b to path through a temp file in the same
// directory, synced and renamed over path, so a reader sees the old content
// or the new, never a partial file.
func writeFileAtomic(path string, b []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(b); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
