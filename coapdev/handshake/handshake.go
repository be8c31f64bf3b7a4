package handshake

import (
	"crypto/rsa"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// Wire sizes of the handshake (spark-protocol.md §2).
const (
	NonceSize           = 40                             // step 1, S→D
	Block2Size          = 256                            // step 2, D→S: RSA-2048 ciphertext
	CorePlaintextSize   = 52                             // nonce(40) ‖ device id(12)
	PhotonPlaintextSize = 214                            // nonce(40) ‖ device id(12) ‖ device SPKI(162)
	MaterialSize        = 40                             // session material M: key(16) ‖ IV(16) ‖ salt(8)
	SessionKeySize      = 128                            // C = RSA-1024 encryption of M
	SignatureSize       = 256                            // RSA-2048 type-1 padded HMAC-SHA1(M, C)
	ServerBlobSize      = SessionKeySize + SignatureSize // step 3, S→D: C ‖ SIG
)

// Kind is the device family, told apart by the length of block 2.
type Kind uint8

// Kinds.
const (
	// Core sends a 52-byte block-2 plaintext: nonce ‖ id.
	Core Kind = iota
	// Photon (and P1) sends 214 bytes: nonce ‖ id ‖ its 162-byte SPKI.
	Photon
)

// String returns "core" or "photon".
func (k Kind) String() string {
	switch k {
	case Core:
		return "core"
	case Photon:
		return "photon"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Session is the outcome of a handshake: who the device is and the
// session material both sides derived (spark-protocol.md §2.3).
type Session struct {
	DeviceID keys.DeviceID
	Kind     Kind
	// Offered is the key a Photon sent in block 2 (nil for a Core). On the
	// server side it is the key Lookup accepted, or equal to it.
	Offered *rsa.PublicKey
	Key     [16]byte // AES-128 key, M[0:16]
	IV      [16]byte // starting IV of both directions, M[16:32]
	Salt    [8]byte  // M[32:40]; seeds the device's counters only
}

func newSession(id keys.DeviceID, kind Kind, offered *rsa.PublicKey, m []byte) *Session {
	s := &Session{DeviceID: id, Kind: kind, Offered: offered}
	copy(s.Key[:], m[0:16])
	copy(s.IV[:], m[16:32])
	copy(s.Salt[:], m[32:40])
	return s
}

// FirstMessageID returns the message-id counter the device seeds from the
// salt (spark-protocol.md §2.3): the u16 at Salt[0:2], big-endian for the
// Core and Photon ≤ 0.7 (le false), little-endian for Photon ≥ 0.8 (le
// true). The device's first message (its Hello) uses this value + 1. A
// server must not rely on it; it reads the id from the Hello. devsim uses
// it to behave like the firmware.
func (s *Session) FirstMessageID(le bool) uint16 {
	if le {
		return binary.LittleEndian.Uint16(s.Salt[0:2])
	}
	return binary.BigEndian.Uint16(s.Salt[0:2])
}

// FirstToken returns the token counter a Core or Photon ≤ 0.7 seeds from
// the salt, Salt[2]; its first token is this value + 1. (Photon ≥ 0.8 does
// not use the salt for tokens: its first token is 1.)
func (s *Session) FirstToken() byte { return s.Salt[2] }

// readFull reads exactly len(b) bytes of what step names, wrapping a short
// read in ErrShortRead.
func readFull(r io.Reader, b []byte, step string) error {
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("handshake: read %s: %w: %w", step, ErrShortRead, err)
	}
	return nil
}
