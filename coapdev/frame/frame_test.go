package frame

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"testing"
	"testing/iotest"
)

var (
	testKey = []byte("0123456789abcdef")
	testIV  = []byte("fedcba9876543210")
)

func testBlock(t testing.TB) cipher.Block {
	t.Helper()
	b, err := aes.NewCipher(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawFrame encrypts padded (already a multiple of 16, padding of the test's
// choosing) with testKey/testIV and returns len ‖ ciphertext.
func rawFrame(t testing.TB, padded []byte) []byte {
	t.Helper()
	ct := make([]byte, len(padded))
	cipher.NewCBCEncrypter(testBlock(t), testIV).CryptBlocks(ct, padded)
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(ct))), ct...)
}

func header(n int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(n)) }

func TestPaddedLen(t *testing.T) {
	for _, tc := range []struct{ n, want int }{{0, 16}, {1, 16}, {15, 16}, {16, 32}, {17, 32}, {639, 640}, {640, 656}} {
		if got := PaddedLen(tc.n); got != tc.want {
			t.Errorf("PaddedLen(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestReadFrameErrors feeds bad streams to a Reader: each gives its
// sentinel, and the error is sticky.
func TestReadFrameErrors(t *testing.T) {
	good := bytes.Repeat([]byte{0x41}, 13)
	good = append(good, 3, 3, 3)
	// A whole block of 0x10 padding with its 9th byte wrong.
	bad16 := append(bytes.Repeat([]byte{0x41}, 16), bytes.Repeat([]byte{16}, 16)...)
	bad16[24] = 15
	tests := []struct {
		name   string
		stream []byte
		max    int
		want   error
	}{
		{"len 0", header(0), 0, ErrEmpty},
		{"over the limit", header(656), CoreMaxFrame, ErrTooLarge},
		{"over the hard limit", header(65520), 0, ErrTooLarge},
		{"over the limit, body absent", header(1040), PhotonMaxFrame, ErrTooLarge},
		{"not a multiple of 16", append(header(17), make([]byte, 17)...), 0, ErrMisaligned},
		{"len 8", append(header(8), make([]byte, 8)...), 0, ErrMisaligned},
		{"pad 0", rawFrame(t, append(bytes.Repeat([]byte{1}, 15), 0)), 0, ErrDecrypt},
		{"pad 17", rawFrame(t, append(bytes.Repeat([]byte{17}, 31), 17)), 0, ErrDecrypt},
		{"pad 0xff", rawFrame(t, bytes.Repeat([]byte{0xff}, 32)), 0, ErrDecrypt},
		{"unequal pad bytes", rawFrame(t, append(bytes.Repeat([]byte{0x41}, 13), 3, 2, 3)), 0, ErrDecrypt},
		{"pad 16 with one bad byte", rawFrame(t, bad16), 0, ErrDecrypt},
		{"pad 2 over a good byte", rawFrame(t, append(bytes.Repeat([]byte{0x41}, 14), 1, 2)), 0, ErrDecrypt},
		{"truncated header", []byte{0x00}, 0, ErrShort},
		{"truncated body", rawFrame(t, good)[:10], 0, ErrShort},
		{"header only", header(16), 0, ErrShort},
		{"clean end", nil, 0, io.EOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.stream), testKey, testIV, tc.max)
			_, err := r.ReadFrame()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == ErrShort && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("ErrShort does not wrap io.ErrUnexpectedEOF")
			}
			if _, err2 := r.ReadFrame(); err2 != err {
				t.Errorf("not sticky: second call gave %v", err2)
			}
		})
	}
}

// TestTooLargeBeforeBody: the limit is checked on the header, so a huge
// length never makes the Reader wait for (or allocate) the body.
func TestTooLargeBeforeBody(t *testing.T) {
	src := &countingReader{r: bytes.NewReader(header(0xFFF0))}
	r := NewReader(src, testKey, testIV, PhotonMaxFrame)
	if _, err := r.ReadFrame(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if src.n != 2 {
		t.Errorf("read %d bytes, want only the 2-byte header", src.n)
	}
	if cap(r.buf) != 0 {
		t.Errorf("allocated a %d-byte buffer for a refused frame", cap(r.buf))
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestOpenKeepsIVOnError: a failed Open leaves the IV chain untouched.
func TestOpenKeepsIVOnError(t *testing.T) {
	block := testBlock(t)
	iv := [16]byte(testIV)
	f := rawFrame(t, bytes.Repeat([]byte{0}, 16))
	if _, err := Open(block, &iv, f[2:]); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("got %v, want ErrDecrypt", err)
	}
	if iv != [16]byte(testIV) {
		t.Errorf("IV changed on error")
	}
	for _, tc := range []struct {
		ct   []byte
		want error
	}{{nil, ErrEmpty}, {make([]byte, 15), ErrMisaligned}, {make([]byte, 33), ErrMisaligned}} {
		if _, err := Open(block, &iv, tc.ct); !errors.Is(err, tc.want) {
			t.Errorf("Open(%d bytes): got %v, want %v", len(tc.ct), err, tc.want)
		}
	}
}

// TestWriterReaderRoundTrip writes frames of many sizes and reads them back
// byte by byte: the IV chains agree and every frame is written in one Write.
func TestWriterReaderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	cw := &countingWriter{w: &buf}
	w := NewWriter(cw, testKey, testIV, HardMaxFrame)
	var sent [][]byte
	for n := range 100 {
		p := bytes.Repeat([]byte{byte(n)}, n*7)
		if err := w.WriteFrame(p); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, p)
	}
	if cw.calls != len(sent) {
		t.Errorf("%d Write calls for %d frames", cw.calls, len(sent))
	}
	r := NewReader(iotest.OneByteReader(&buf), testKey, testIV, HardMaxFrame)
	for i, want := range sent {
		got, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d: got %d bytes, want %d", i, len(got), len(want))
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Errorf("after the last frame: got %v, want io.EOF", err)
	}
}

type countingWriter struct {
	w     io.Writer
	calls int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.calls++
	return c.w.Write(p)
}

func TestWriterLimits(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, testKey, testIV, CoreMaxFrame)
	// 639 bytes pad to 640: fits a Core. 640 pad to 656: refused.
	if err := w.WriteFrame(make([]byte, 640)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("640 bytes: got %v, want ErrTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("wrote %d bytes for a refused frame", buf.Len())
	}
	if err := w.WriteFrame(make([]byte, 639)); err != nil {
		t.Fatalf("639 bytes: %v", err)
	}
	if got := binary.BigEndian.Uint16(buf.Bytes()); got != 640 {
		t.Errorf("length header %d, want 640", got)
	}
	w.SetMax(0)
	if err := w.WriteFrame(make([]byte, HardMaxFrame)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("hard limit: got %v, want ErrTooLarge", err)
	}
	w.SetMax(1 << 20) // clamps to the u16 header
	if err := w.WriteFrame(make([]byte, 65520)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("u16 limit: got %v, want ErrTooLarge", err)
	}
	// The refused frames did not move the IV: the stream still reads.
	r := NewReader(&buf, testKey, testIV, CoreMaxFrame)
	if p, err := r.ReadFrame(); err != nil || len(p) != 639 {
		t.Errorf("read back: %d bytes, %v", len(p), err)
	}
}

func TestReaderSetMax(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, testKey, testIV, 0)
	for range 2 {
		if err := w.WriteFrame(make([]byte, 700)); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(&buf, testKey, testIV, 0)
	if _, err := r.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	r.SetMax(CoreMaxFrame)
	if _, err := r.ReadFrame(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("got %v, want ErrTooLarge", err)
	}
}

// TestWriterErrorSticky: a failed Write is returned, stays, and does not
// advance the IV.
func TestWriterErrorSticky(t *testing.T) {
	boom := errors.New("boom")
	fw := &failWriter{err: boom}
	w := NewWriter(fw, testKey, testIV, 0)
	if err := w.WriteFrame([]byte("x")); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	if w.iv != [16]byte(testIV) {
		t.Errorf("IV advanced after a failed write")
	}
	fw.err = nil
	if err := w.WriteFrame([]byte("x")); !errors.Is(err, boom) {
		t.Errorf("not sticky: %v", err)
	}
	w2 := NewWriter(&shortWriter{}, testKey, testIV, 0)
	if err := w2.WriteFrame([]byte("x")); !errors.Is(err, io.ErrShortWrite) {
		t.Errorf("short write: got %v", err)
	}
}

type failWriter struct{ err error }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	return len(p), nil
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) - 1, nil }

func TestReadErrorWrapped(t *testing.T) {
	boom := errors.New("boom")
	r := NewReader(iotest.ErrReader(boom), testKey, testIV, 0)
	if _, err := r.ReadFrame(); !errors.Is(err, boom) {
		t.Errorf("got %v, want boom wrapped", err)
	}
	f := rawFrame(t, append([]byte("hello world!"), 4, 4, 4, 4))
	r = NewReader(io.MultiReader(bytes.NewReader(f[:5]), iotest.ErrReader(boom)), testKey, testIV, 0)
	if _, err := r.ReadFrame(); !errors.Is(err, boom) {
		t.Errorf("body: got %v, want boom wrapped", err)
	}
}

func TestKeepAliveByte(t *testing.T) {
	// spark-protocol.md §4.4 "Ping": the Photon may send a 1-byte 0x00.
	var buf bytes.Buffer
	if err := NewWriter(&buf, testKey, testIV, 0).WriteFrame([]byte{0}); err != nil {
		t.Fatal(err)
	}
	p, err := NewReader(&buf, testKey, testIV, 0).ReadFrame()
	if err != nil || !bytes.Equal(p, []byte{0}) {
		t.Errorf("got %x, %v; want 00", p, err)
	}
}

func TestBadKeyPanics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key, iv []byte
	}{{"short key", testKey[:8], testIV}, {"short iv", testKey, testIV[:8]}} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			NewReader(nil, tc.key, tc.iv, 0)
		})
	}
}

// stream returns n frames of plaintext p written from testIV.
func stream(t testing.TB, n int, p []byte) []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf, testKey, testIV, 0)
	for range n {
		if err := w.WriteFrame(p); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// TestSteadyStateAllocs: once warm, reading and writing frames allocates
// nothing (the Reader reuses its buffer, the Writer its scratch).
func TestSteadyStateAllocs(t *testing.T) {
	plain := bytes.Repeat([]byte{0x42}, 200)
	data := stream(t, 8, plain)
	src := bytes.NewReader(data)
	r := NewReader(src, testKey, testIV, 0)
	readAll := func() {
		src.Reset(data)
		r.iv = [16]byte(testIV)
		for range 8 {
			if _, err := r.ReadFrame(); err != nil {
				t.Fatal(err)
			}
		}
	}
	readAll()
	if a := testing.AllocsPerRun(100, readAll); a != 0 {
		t.Errorf("ReadFrame: %v allocs per 8 frames, want 0", a)
	}
	w := NewWriter(io.Discard, testKey, testIV, 0)
	if a := testing.AllocsPerRun(100, func() {
		if err := w.WriteFrame(plain); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("WriteFrame: %v allocs, want 0", a)
	}
}

func BenchmarkWriteFrame(b *testing.B) {
	for _, size := range []int{4, 200, 1000} {
		b.Run(itoa(size), func(b *testing.B) {
			plain := make([]byte, size)
			w := NewWriter(io.Discard, testKey, testIV, 0)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := w.WriteFrame(plain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadFrame(b *testing.B) {
	for _, size := range []int{4, 200, 1000} {
		b.Run(itoa(size), func(b *testing.B) {
			const n = 64
			data := stream(b, n, make([]byte, size))
			src := bytes.NewReader(data)
			r := NewReader(src, testKey, testIV, 0)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if i%n == 0 {
					src.Reset(data)
					r.iv = [16]byte(testIV)
				}
				i++
				if _, err := r.ReadFrame(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
