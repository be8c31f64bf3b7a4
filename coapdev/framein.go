package coapdev

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
)

// frameIn reads the device's frames (spark-protocol.md §3) for the read
// loop, which owns it: it reads the conn directly into a small buffer and
// decrypts complete frames in place with frame.Open.
//
// It does what a frame.Reader over a bufio.Reader does, with less memory
// per idle session, which is what thousands of sessions mostly are: the
// cipher is shared with the write loop (cipher.Block is safe for concurrent
// use), the buffer starts at inBuf bytes and only a large frame grows it
// (back to inBuf afterwards), and the read blocks in a shallow call, so the
// goroutine's stack shrinks to a few KiB while idle.
type frameIn struct {
	// Owned by the read loop.
	conn  io.Reader // the net.Conn; deadlines are the read loop's
	block cipher.Block
	iv    [frame.BlockSize]byte
	max   int
	buf   []byte // buf[r:w] is read and not consumed
	r, w  int
}

// inBuf is the initial and idle size of the input buffer: most device
// frames (events, ACKs, pings) are under 100 bytes.
const inBuf = 256

func newFrameIn(conn io.Reader, block cipher.Block, iv [frame.BlockSize]byte, max int) *frameIn {
	return &frameIn{conn: conn, block: block, iv: iv, max: max}
}

// next returns the plaintext of the next frame, valid until the next call.
// Errors: io.EOF between frames; frame.ErrShort inside one; frame.ErrEmpty,
// frame.ErrTooLarge (checked on the header), frame.ErrMisaligned,
// frame.ErrDecrypt; or the conn's read error, wrapped. After an error the
// stream is out of step: the caller ends the session.
func (f *frameIn) next() ([]byte, error) {
	if f.r == f.w && cap(f.buf) > inBuf {
		f.buf = nil // a large frame passed: back to the small buffer
	}
	if f.buf == nil {
		f.buf = make([]byte, inBuf)
		f.r, f.w = 0, 0
	}
	if f.r == f.w {
		f.r, f.w = 0, 0
	}
	if err := f.fill(2); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(f.buf[f.r:]))
	switch {
	case n == 0:
		return nil, frame.ErrEmpty
	case n > f.max:
		return nil, frame.ErrTooLarge
	case n%frame.BlockSize != 0:
		return nil, frame.ErrMisaligned
	}
	if err := f.fill(2 + n); err != nil {
		return nil, err
	}
	ct := f.buf[f.r+2 : f.r+2+n]
	f.r += 2 + n
	return frame.Open(f.block, &f.iv, ct)
}

// fill makes sure buf[r:] holds at least n bytes, reading as needed.
func (f *frameIn) fill(n int) error {
	if f.w-f.r >= n {
		return nil
	}
	if f.r+n > len(f.buf) {
		// Move the partial frame to the front, growing for a large one.
		if n > len(f.buf) {
			nb := make([]byte, max(n, inBuf))
			f.w = copy(nb, f.buf[f.r:f.w])
			f.buf = nb
		} else {
			f.w = copy(f.buf, f.buf[f.r:f.w])
		}
		f.r = 0
	}
	for f.w-f.r < n {
		m, err := f.conn.Read(f.buf[f.w:])
		f.w += m
		if err != nil {
			if f.w-f.r >= n {
				return nil
			}
			switch {
			case errors.Is(err, io.EOF) && f.w == f.r:
				return io.EOF
			case errors.Is(err, io.EOF):
				return frame.ErrShort
			}
			return fmt.Errorf("read: %w", err)
		}
	}
	return nil
}
