package frame

import (
	"errors"
	"fmt"
	"io"
)

var (
	// ErrEmpty reports a frame whose length header is 0
	// (spark-protocol.md §3: len is always at least 16).
	ErrEmpty = errors.New("frame: empty frame")

	// ErrTooLarge reports a frame longer than the configured limit. A Reader
	// checks it on the length header, before reading the body; a Writer
	// returns it without writing anything.
	ErrTooLarge = errors.New("frame: frame too large")

	// ErrMisaligned reports a frame length that is not a multiple of the
	// AES block size (16).
	ErrMisaligned = errors.New("frame: length not a multiple of 16")

	// ErrDecrypt reports invalid PKCS#7 padding after decryption. Every
	// padding failure returns this one error, so that callers cannot become
	// a padding oracle (spark-protocol.md §7.1).
	ErrDecrypt = errors.New("frame: decrypt: bad padding")

	// ErrShort reports a stream that ended in the middle of a frame (inside
	// the length header or the body). It wraps io.ErrUnexpectedEOF.
	ErrShort = fmt.Errorf("frame: truncated frame: %w", io.ErrUnexpectedEOF)
)
