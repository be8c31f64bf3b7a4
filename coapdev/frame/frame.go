package frame

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
)

// BlockSize is the AES block size and the frame length granularity.
const BlockSize = 16

// Frame size limits: bytes of ciphertext in one frame, i.e. the value of the
// u16 length header (spark-protocol.md §3 "Size limits").
const (
	// CoreMaxFrame is the Core's receive buffer; a longer S→D frame makes
	// the Core disconnect. It is also the most a Core sends.
	CoreMaxFrame = 640
	// PhotonMaxFrame bounds D→S frames of a Photon (its PROTOCOL_BUFFER_SIZE
	// is 800; we accept up to 1024).
	PhotonMaxFrame = 1024
	// HardMaxFrame is the absolute server-side bound before the device kind
	// is known (spark-protocol.md §7.8: the reference has none).
	HardMaxFrame = 16384
)

// headerSize is the u16 BE length prefix.
const headerSize = 2

// maxWire is the largest multiple of 16 a u16 length can carry.
const maxWire = 65535 &^ (BlockSize - 1)

// PaddedLen returns the ciphertext length of a plaintext of n bytes: PKCS#7
// padding is always present, so a multiple of 16 gets a whole extra block
// (spark-protocol.md §3 "Padding").
func PaddedLen(n int) int {
	return (n/BlockSize + 1) * BlockSize
}

// clampMax turns a configured limit into the effective one: n <= 0 means
// HardMaxFrame, and no limit exceeds what the u16 header can carry.
func clampMax(n int) int {
	switch {
	case n <= 0:
		return HardMaxFrame
	case n > maxWire:
		return maxWire
	}
	return n
}

// Seal pads plain with PKCS#7, encrypts it with AES-CBC under block and *iv,
// appends len (u16 BE) ‖ ciphertext to dst and returns the extended slice.
// It sets *iv to the first ciphertext block, the IV of the next frame in the
// same direction (spark-protocol.md §3: the FIRST block, not the last).
//
// block must have a 16-byte block size. Seal panics if the padded plaintext
// cannot be described by the u16 length (more than 65519 bytes of plain);
// that is a programmer error, Writer checks it before calling.
func Seal(dst []byte, block cipher.Block, iv *[BlockSize]byte, plain []byte) []byte {
	n := PaddedLen(len(plain))
	if n > maxWire {
		panic("frame: Seal: plaintext too large for a frame")
	}
	start := len(dst)
	dst = grow(dst, headerSize+n)
	out := dst[start:]
	binary.BigEndian.PutUint16(out, uint16(n))
	ct := out[headerSize:]
	copy(ct, plain)
	pad := byte(n - len(plain))
	for i := len(plain); i < n; i++ {
		ct[i] = pad
	}
	// CBC encryption, block by block, in place.
	prev := iv[:]
	for off := 0; off < n; off += BlockSize {
		b := ct[off : off+BlockSize]
		subtle.XORBytes(b, b, prev)
		block.Encrypt(b, b)
		prev = b
	}
	copy(iv[:], ct[:BlockSize])
	return dst
}

// Open decrypts the ciphertext ct (the body of one frame, without the length
// header) in place with AES-CBC under block and *iv, checks and strips the
// PKCS#7 padding and returns the plaintext, which aliases ct. On success it
// sets *iv to the first 16 bytes of the ciphertext (spark-protocol.md §3); on
// failure *iv is unchanged and ct holds garbage.
//
// Errors: ErrEmpty (len 0), ErrMisaligned (len not a multiple of 16),
// ErrDecrypt (any padding failure: pad byte 0 or > 16, or unequal pad bytes;
// checked in constant time).
func Open(block cipher.Block, iv *[BlockSize]byte, ct []byte) ([]byte, error) {
	n := len(ct)
	switch {
	case n == 0:
		return nil, ErrEmpty
	case n%BlockSize != 0:
		return nil, ErrMisaligned
	}
	var next, prev, cur [BlockSize]byte
	copy(next[:], ct[:BlockSize])
	prev = *iv
	for off := 0; off < n; off += BlockSize {
		b := ct[off : off+BlockSize]
		copy(cur[:], b)
		block.Decrypt(b, b)
		subtle.XORBytes(b, b, prev[:])
		prev = cur
	}
	pad, ok := checkPadding(ct)
	if !ok {
		return nil, ErrDecrypt
	}
	*iv = next
	return ct[:n-pad], nil
}

// checkPadding validates PKCS#7 padding on a whole number of blocks
// (len(p) >= 16) in constant time with respect to the padding bytes
// (spark-protocol.md §3: 1 <= pad <= 16 and all pad bytes equal;
// §7.1: no padding oracle).
func checkPadding(p []byte) (int, bool) {
	last := p[len(p)-1]
	good := subtle.ConstantTimeLessOrEq(1, int(last)) &
		subtle.ConstantTimeLessOrEq(int(last), BlockSize)
	tail := p[len(p)-BlockSize:]
	for i := range BlockSize {
		// Bytes within the padding (distance from the end < last) must
		// equal last; the others are not checked.
		inPad := subtle.ConstantTimeLessOrEq(i+1, int(last))
		eq := subtle.ConstantTimeByteEq(tail[BlockSize-1-i], last)
		good &= eq | (inPad ^ 1)
	}
	return int(last), good == 1
}

// grow extends b by n bytes, reusing its capacity when it can.
func grow(b []byte, n int) []byte {
	if need := len(b) + n; need <= cap(b) {
		return b[:need]
	}
	nb := make([]byte, len(b)+n, 2*cap(b)+n)
	copy(nb, b)
	return nb
}
