package msg

import (
	"errors"
	"fmt"
	"sync"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

// MaxSize bounds an encoded message (and what Decode accepts). It equals
// the largest frame the server accepts (frame.HardMaxFrame).
const MaxSize = 16384

// maxOptions bounds the options of one message. A device sends at most four;
// the largest S→D message, an event named with 64 slashes, has 67.
const maxOptions = 256

// maxOptionLen is the longest Uri-Path or Uri-Query value (RFC 7252 §5.10).
const maxOptionLen = 255

// CoAP option numbers the protocol uses (spark-protocol.md §4).
const (
	optURIPath  = 11 // Uri-Path: repeatable string
	optMaxAge   = 14 // Max-Age: uint, 0..4 bytes
	optURIQuery = 15 // Uri-Query: repeatable, raw bytes here
)

// Message is one CoAP message of the Spark protocol. It is a plain value:
// build it with the New* functions or a literal, encode it with Encode.
type Message struct {
	Type Type
	Code Code
	ID   uint16
	// Token is 0..8 bytes; S→D requests use exactly 1 (spark-protocol.md §4.1).
	Token []byte
	// Path holds the Uri-Path segments in order. A segment may contain '/'
	// (a device puts a whole event name in one option, §4.4).
	Path []string
	// MaxAge is the Max-Age option, valid when HasMaxAge.
	MaxAge    uint32
	HasMaxAge bool
	// MaxAgeLen is the wire width of Max-Age when it is wider than the
	// minimal encoding (the Core writes 3 bytes, §4.4), so that a decoded
	// message re-encodes byte for byte. 0 means minimal, the only form the
	// builders produce. Widths above 4 are treated as 4.
	MaxAgeLen uint8
	// Query holds the Uri-Query options as raw bytes, in order. A zero-length
	// element is a zero-length option (header 0x40, §4.4 FunctionCall).
	Query [][]byte
	// Payload is the data after the 0xFF marker; nil or empty means none.
	Payload []byte
}

// IsEmpty reports whether m has code 0.00 (a ping or an empty ACK/RST).
func (m Message) IsEmpty() bool { return m.Code == Empty }

// optionsPool holds the small option arrays of Decode.
var optionsPool = sync.Pool{New: func() any { return new([8]message.Option) }}

// Decode parses one CoAP message (the unpadded plaintext of a frame) with
// go-coap's udp/coder codec.
//
// Aliasing: Token, Query elements and Payload are sub-slices of b, so b must
// not be reused while the Message is in use (frame.Reader reuses its buffer:
// copy what you keep). Path segments are copied into strings.
//
// Rejected with an error wrapping ErrMalformed: more than MaxSize bytes,
// a version other than 1, TKL 9..15, a truncated token or option, an option
// delta or length nibble of 15, a payload marker with no payload, a Uri-Path
// or Uri-Query value over 255 bytes, more than 256 options, and any critical
// (odd-numbered) option other than Uri-Path and Uri-Query, which this
// protocol never uses (RFC 7252 §5.4.1). Elective options other than Max-Age
// are ignored; so are a Max-Age longer than 4 bytes (go-coap skips it, RFC
// 7252 §5.4.3) and a repeated Max-Age (§5.4.5), in which case the first one
// counts. Empty messages with a token are accepted (the reference server
// sends them, §7.11).
func Decode(b []byte) (Message, error) {
	if len(b) > MaxSize {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	// Most messages have at most 4 options: try a small array first. go-coap
	// keeps its options slice beyond the stack's reach, so the array comes
	// from a pool (nothing of it outlives this call: values alias b).
	arr := optionsPool.Get().(*[8]message.Option)
	defer func() {
		clear(arr[:])
		optionsPool.Put(arr)
	}()
	cm := message.Message{Options: arr[:0]}
	_, err := coder.DefaultCoder.Decode(b, &cm)
	if errors.Is(err, message.ErrOptionsTooSmall) {
		cm = message.Message{Options: make(message.Options, 0, maxOptions)}
		_, err = coder.DefaultCoder.Decode(b, &cm)
	}
	if err != nil && len(b) > 4 && b[len(b)-1] == 0xFF {
		// The firmware writes the payload marker even when no payload
		// follows (an empty string variable, an event with empty data:
		// device-os messages.cpp). RFC 7252 calls that a format error; we
		// accept it as "no payload". 0xFF cannot be an option header, so
		// a message that decodes without its last byte had the marker
		// there.
		cm = message.Message{Options: arr[:0]}
		_, err = coder.DefaultCoder.Decode(b[:len(b)-1], &cm)
		if errors.Is(err, message.ErrOptionsTooSmall) {
			cm = message.Message{Options: make(message.Options, 0, maxOptions)}
			_, err = coder.DefaultCoder.Decode(b[:len(b)-1], &cm)
		}
	}
	if err != nil {
		return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	m := Message{
		Type:    Type(cm.Type),
		Code:    Code(cm.Code),
		ID:      uint16(cm.MessageID),
		Token:   cm.Token,
		Payload: cm.Payload,
	}
	var nPath, nQuery int
	for _, o := range cm.Options {
		switch o.ID {
		case optURIPath:
			nPath++
		case optURIQuery:
			nQuery++
		}
	}
	if nPath > 0 {
		m.Path = make([]string, 0, nPath)
	}
	if nQuery > 0 {
		m.Query = make([][]byte, 0, nQuery)
	}
	for _, o := range cm.Options {
		switch {
		case o.ID == optURIPath:
			if len(o.Value) > maxOptionLen {
				return Message{}, fmt.Errorf("%w: Uri-Path of %d bytes", ErrMalformed, len(o.Value))
			}
			m.Path = append(m.Path, string(o.Value))
		case o.ID == optURIQuery:
			if len(o.Value) > maxOptionLen {
				return Message{}, fmt.Errorf("%w: Uri-Query of %d bytes", ErrMalformed, len(o.Value))
			}
			m.Query = append(m.Query, o.Value)
		case o.ID == optMaxAge:
			if m.HasMaxAge {
				continue // RFC 7252 §5.4.5: a repeated elective option is ignored
			}
			m.HasMaxAge = true
			for _, c := range o.Value {
				m.MaxAge = m.MaxAge<<8 | uint32(c)
			}
			if len(o.Value) != uintLen(m.MaxAge) {
				m.MaxAgeLen = uint8(len(o.Value))
			}
		case o.ID%2 == 1:
			return Message{}, fmt.Errorf("%w: unsupported critical option %d", ErrMalformed, o.ID)
		}
	}
	return m, nil
}

// Encode returns the CoAP bytes of m; see AppendEncode.
func (m Message) Encode() ([]byte, error) {
	return m.AppendEncode(nil)
}

// AppendEncode appends the CoAP encoding of m to dst, using go-coap's
// udp/coder codec. Options are written in ascending order: the Uri-Path
// segments, Max-Age (minimal-length uint, or MaxAgeLen bytes), then the
// Uri-Query options. A zero-length payload writes no 0xFF marker.
//
// Errors wrap ErrEncode: a Type above 3, a token over 8 bytes, a Uri-Path or
// Uri-Query value over 255 bytes, more than 256 options, or more than MaxSize
// bytes in all. dst is returned unchanged on error.
func (m Message) AppendEncode(dst []byte) ([]byte, error) {
	if m.Type > Reset {
		return dst, fmt.Errorf("%w: type %d", ErrEncode, m.Type)
	}
	if len(m.Token) > message.MaxTokenSize {
		return dst, fmt.Errorf("%w: token of %d bytes", ErrEncode, len(m.Token))
	}
	nOpts := len(m.Path) + len(m.Query)
	if m.HasMaxAge {
		nOpts++
	}
	if nOpts > maxOptions {
		return dst, fmt.Errorf("%w: %d options", ErrEncode, nOpts)
	}
	var arr [8]message.Option
	opts := message.Options(arr[:0])
	if nOpts > len(arr) {
		opts = make(message.Options, 0, nOpts)
	}
	// One scratch buffer holds the bytes of the Uri-Path strings and of
	// Max-Age, so encoding allocates once for all option values.
	need := 4
	for _, p := range m.Path {
		if len(p) > maxOptionLen {
			return dst, fmt.Errorf("%w: Uri-Path of %d bytes", ErrEncode, len(p))
		}
		need += len(p)
	}
	scratch := make([]byte, 0, need)
	for _, p := range m.Path {
		start := len(scratch)
		scratch = append(scratch, p...)
		opts = append(opts, message.Option{ID: optURIPath, Value: scratch[start:len(scratch):len(scratch)]})
	}
	if m.HasMaxAge {
		n := max(uintLen(m.MaxAge), min(int(m.MaxAgeLen), 4))
		start := len(scratch)
		for i := n - 1; i >= 0; i-- {
			scratch = append(scratch, byte(m.MaxAge>>(8*i)))
		}
		opts = append(opts, message.Option{ID: optMaxAge, Value: scratch[start:]})
	}
	for _, q := range m.Query {
		if len(q) > maxOptionLen {
			return dst, fmt.Errorf("%w: Uri-Query of %d bytes", ErrEncode, len(q))
		}
		opts = append(opts, message.Option{ID: optURIQuery, Value: q})
	}
	cm := message.Message{
		Token:     m.Token,
		Options:   opts,
		Code:      codes.Code(m.Code),
		Payload:   m.Payload,
		MessageID: int32(m.ID),
		Type:      message.Type(m.Type),
	}
	size, err := coder.DefaultCoder.Size(cm)
	if err != nil {
		return dst, fmt.Errorf("%w: %w", ErrEncode, err)
	}
	if size > MaxSize {
		return dst, fmt.Errorf("%w: %d bytes", ErrEncode, size)
	}
	start := len(dst)
	out := growBytes(dst, size)
	if _, err := coder.DefaultCoder.Encode(cm, out[start:]); err != nil {
		return dst, fmt.Errorf("%w: %w", ErrEncode, err)
	}
	return out, nil
}

// uintLen is the minimal length of a CoAP uint option value (RFC 7252 §3.2).
func uintLen(v uint32) int {
	switch {
	case v == 0:
		return 0
	case v <= 0xFF:
		return 1
	case v <= 0xFFFF:
		return 2
	case v <= 0xFFFFFF:
		return 3
	}
	return 4
}

// growBytes extends b by n bytes, reusing its capacity when it can.
func growBytes(b []byte, n int) []byte {
	if need := len(b) + n; need <= cap(b) {
		return b[:need]
	}
	nb := make([]byte, len(b)+n)
	copy(nb, b)
	return nb
}
