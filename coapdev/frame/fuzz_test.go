package frame

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// chunkReader returns the stream in chunks whose sizes cycle through sizes
// (each 1..256), so that frames split anywhere.
type chunkReader struct {
	data  []byte
	sizes []byte
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = int(c.sizes[c.i%len(c.sizes)]) + 1
		c.i++
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func addVectorSeeds(f *testing.F, add func(plain []byte)) {
	var v aesFraming
	vectors.Load(f, "aes_framing.json", &v)
	for _, s := range v.Sequence {
		add(vectors.Hex(f, s.CoAP))
	}
}

// FuzzFrame: plaintexts split out of data are written with a Writer under a
// limit and read back through a stream cut into arbitrary chunks. Every
// frame the Writer accepts reads back equal, refused frames write nothing,
// every written frame respects the limit, and Seal/Open agree.
func FuzzFrame(f *testing.F) {
	addVectorSeeds(f, func(p []byte) { f.Add(p, []byte{3, 200, 0}, uint16(CoreMaxFrame)) })
	f.Add(bytes.Repeat([]byte{0x10}, 2000), []byte{15, 16, 31}, uint16(640))
	f.Add([]byte{}, []byte{}, uint16(0))
	f.Fuzz(func(t *testing.T, data, cuts []byte, limit uint16) {
		// Split data into plaintexts: each cut byte c takes c*4 bytes (0
		// gives an empty plaintext); after 64 plaintexts the rest is one.
		var plains [][]byte
		rest := data
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if len(cuts) > 0 && i < 64 {
				n = min(n, int(cuts[i%len(cuts)])*4)
			}
			plains = append(plains, rest[:n])
			rest = rest[n:]
		}
		eff := clampMax(int(limit))
		var buf bytes.Buffer
		w := NewWriter(&buf, testKey, testIV, int(limit))
		var sent [][]byte
		for _, p := range plains {
			before := buf.Len()
			err := w.WriteFrame(p)
			if PaddedLen(len(p)) > eff {
				if !errors.Is(err, ErrTooLarge) || buf.Len() != before {
					t.Fatalf("%d bytes over limit %d: err %v, wrote %d", len(p), eff, err, buf.Len()-before)
				}
				continue
			}
			if err != nil {
				t.Fatalf("WriteFrame(%d bytes): %v", len(p), err)
			}
			n := buf.Len() - before
			if n != 2+PaddedLen(len(p)) || n-2 > eff || (n-2)%BlockSize != 0 {
				t.Fatalf("frame of %d bytes for %d plain bytes, limit %d", n, len(p), eff)
			}
			sent = append(sent, p)
		}
		wire := bytes.Clone(buf.Bytes())

		r := NewReader(&chunkReader{data: buf.Bytes(), sizes: cuts}, testKey, testIV, int(limit))
		for i, want := range sent {
			got, err := r.ReadFrame()
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("frame %d differs", i)
			}
		}
		if _, err := r.ReadFrame(); err != io.EOF {
			t.Fatalf("after %d frames: got %v, want io.EOF", len(sent), err)
		}

		// The pure helpers give the same stream.
		block := testBlock(t)
		iv := [16]byte(testIV)
		var sealed []byte
		for _, p := range sent {
			sealed = Seal(sealed, block, &iv, p)
		}
		if !bytes.Equal(sealed, wire) {
			t.Fatalf("Seal stream differs from Writer stream")
		}
	})
}

// FuzzOpen: arbitrary ciphertext, and arbitrary streams, give only our
// sentinel errors and never a panic; a success strips 1..16 bytes and
// moves the IV to the first block, a failure leaves the IV alone.
func FuzzOpen(f *testing.F) {
	block := testBlock(f)
	addVectorSeeds(f, func(p []byte) {
		iv := [16]byte(testIV)
		f.Add(Seal(nil, block, &iv, p), uint16(0))
	})
	f.Add([]byte{0x00, 0x00}, uint16(0))
	f.Add([]byte{0xff, 0xf0, 1, 2, 3}, uint16(100))
	f.Add(make([]byte, 33), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		// As a ciphertext body.
		iv := [16]byte(testIV)
		ct := bytes.Clone(data)
		p, err := Open(block, &iv, ct)
		switch {
		case err == nil:
			if d := len(data) - len(p); d < 1 || d > 16 {
				t.Fatalf("stripped %d bytes", d)
			}
			if !bytes.Equal(iv[:], data[:16]) {
				t.Fatalf("IV not the first ciphertext block")
			}
		case errors.Is(err, ErrEmpty), errors.Is(err, ErrMisaligned), errors.Is(err, ErrDecrypt):
			if iv != [16]byte(testIV) {
				t.Fatalf("IV moved on error %v", err)
			}
		default:
			t.Fatalf("foreign error %v", err)
		}

		// As a stream.
		r := NewReader(bytes.NewReader(data), testKey, testIV, int(limit))
		for {
			p, err := r.ReadFrame()
			if err == nil {
				if len(p) > clampMax(int(limit)) {
					t.Fatalf("frame over the limit")
				}
				continue
			}
			for _, ok := range []error{io.EOF, ErrEmpty, ErrTooLarge, ErrMisaligned, ErrDecrypt, ErrShort} {
				if errors.Is(err, ok) {
					return
				}
			}
			t.Fatalf("foreign error %v", err)
		}
	})
}
