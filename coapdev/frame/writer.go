package frame

import (
	"crypto/cipher"
	"fmt"
	"io"
)

// Writer encrypts frames and writes them to an io.Writer; it owns the
// outbound IV chain, so the order of WriteFrame calls is the wire order
// (STYLE.md §3.3: only the write loop encrypts). It is not safe for
// concurrent use.
type Writer struct {
	// Owned by the write loop.
	w       io.Writer
	block   cipher.Block
	iv      [BlockSize]byte
	max     int
	scratch []byte // reused for every frame
	err     error  // sticky after a failed Write
}

// NewWriter returns a Writer that encrypts frames to w with the 16-byte AES
// key and the 16-byte initial IV, and refuses frames whose ciphertext would
// exceed limit bytes (limit <= 0 means HardMaxFrame; use CoreMaxFrame for a
// Core, spark-protocol.md §3). It panics if key or iv is not 16 bytes long.
func NewWriter(w io.Writer, key, iv []byte, limit int) *Writer {
	wr := &Writer{w: w, block: newBlock(key), max: clampMax(limit)}
	setIV(&wr.iv, iv)
	return wr
}

// SetMax changes the frame size limit for later frames (n <= 0 means
// HardMaxFrame).
func (w *Writer) SetMax(n int) { w.max = clampMax(n) }

// WriteFrame pads and encrypts plain and writes len ‖ ciphertext in ONE
// Write call, so that a frame is never interleaved or split by this package
// (spark-protocol.md §3: frames are sent whole and in order). It blocks in
// the underlying writer; deadlines are the caller's.
//
// ErrTooLarge: the padded size exceeds the limit; nothing is written and the
// Writer stays usable. A Write error is wrapped and sticky (the peer may have
// seen part of a frame); the IV advances only after a complete write.
func (w *Writer) WriteFrame(plain []byte) error {
	if w.err != nil {
		return w.err
	}
	if PaddedLen(len(plain)) > w.max {
		return ErrTooLarge
	}
	iv := w.iv
	w.scratch = Seal(w.scratch[:0], w.block, &iv, plain)
	n, err := w.w.Write(w.scratch)
	if err == nil && n != len(w.scratch) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = fmt.Errorf("frame: write: %w", err)
		return w.err
	}
	w.iv = iv
	return nil
}
