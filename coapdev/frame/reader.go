package frame

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Reader reads frames from an io.Reader and decrypts them; it owns the
// inbound IV chain. It is not safe for concurrent use: one read loop owns it.
// Wrap a net.Conn in a bufio.Reader first to avoid two reads per frame.
type Reader struct {
	// Owned by the read loop.
	r     io.Reader
	block cipher.Block
	iv    [BlockSize]byte
	max   int
	hdr   [headerSize]byte
	buf   []byte // reused for every frame
	err   error  // sticky: the stream is out of step after any error
}

// NewReader returns a Reader that decrypts frames from r with the 16-byte AES
// key and the 16-byte initial IV (spark-protocol.md §2.3: M[16..31]), and
// refuses frames longer than limit bytes of ciphertext (limit <= 0 means
// HardMaxFrame). It panics if key or iv is not 16 bytes long: that is a
// programmer error.
func NewReader(r io.Reader, key, iv []byte, limit int) *Reader {
	block := newBlock(key)
	rd := &Reader{r: r, block: block, max: clampMax(limit)}
	setIV(&rd.iv, iv)
	return rd
}

// SetMax changes the frame size limit for later frames, e.g. once the device
// kind is known (n <= 0 means HardMaxFrame).
func (r *Reader) SetMax(n int) { r.max = clampMax(n) }

// ReadFrame reads one frame, decrypts it and returns the unpadded plaintext.
// The slice is valid until the next call. It blocks in the underlying
// reader; deadlines are the caller's.
//
// A clean end of stream before the first byte of a frame returns io.EOF.
// Errors: ErrEmpty, ErrTooLarge (checked on the header, before the body is
// read), ErrMisaligned, ErrShort (the stream ended inside a frame), ErrDecrypt
// (bad padding), or the underlying reader's error, wrapped. The IV advances
// only on success. Every error is sticky: later calls return it again,
// because the stream is out of step; close the connection.
//
// 1-byte plaintexts (the Photon keep-alive 0x00, spark-protocol.md §4.4
// "Ping") are returned as they are.
func (r *Reader) ReadFrame() ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	p, err := r.readFrame()
	if err != nil {
		r.err = err
		return nil, err
	}
	return p, nil
}

func (r *Reader) readFrame() ([]byte, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, ErrShort
		}
		return nil, fmt.Errorf("frame: read header: %w", err)
	}
	n := int(binary.BigEndian.Uint16(r.hdr[:]))
	// spark-protocol.md §3 and §7.8: validate the length before reading.
	switch {
	case n == 0:
		return nil, ErrEmpty
	case n > r.max:
		return nil, ErrTooLarge
	case n%BlockSize != 0:
		return nil, ErrMisaligned
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n, max(n, min(2*cap(r.buf), r.max)))
	}
	ct := r.buf[:n]
	if _, err := io.ReadFull(r.r, ct); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrShort
		}
		return nil, fmt.Errorf("frame: read body: %w", err)
	}
	return Open(r.block, &r.iv, ct)
}

// newBlock returns the AES-128 cipher for key, panicking on a wrong length.
func newBlock(key []byte) cipher.Block {
	if len(key) != 16 {
		panic(fmt.Sprintf("frame: key must be 16 bytes, got %d", len(key)))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		panic("frame: " + err.Error())
	}
	return block
}

func setIV(dst *[BlockSize]byte, iv []byte) {
	if len(iv) != BlockSize {
		panic(fmt.Sprintf("frame: iv must be 16 bytes, got %d", len(iv)))
	}
	copy(dst[:], iv)
}
