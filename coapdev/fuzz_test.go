package coapdev

import (
	"bytes"
	"crypto/aes"
	"crypto/rsa"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), c.n, len(c.b))
	copy(p, c.b[:k])
	c.b = c.b[k:]
	return k, nil
}

// errClass names the error classes frameIn and frame.Reader must agree on.
func errClass(err error) string {
	for _, e := range []error{io.EOF, frame.ErrEmpty, frame.ErrTooLarge, frame.ErrMisaligned, frame.ErrDecrypt, frame.ErrShort} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	if err == nil {
		return "nil"
	}
	return "other: " + err.Error()
}

// FuzzFrameIn: the session's frame input reads any byte stream, in any
// chunking, exactly as frame.Reader does (same plaintexts, same error
// classes, same stop), and never returns more than the limit allows.
func FuzzFrameIn(f *testing.F) {
	var v struct {
		Key      string `json:"key_hex"`
		IV       string `json:"initial_iv_hex"`
		Sequence []struct {
			Frame string `json:"frame_hex"`
		} `json:"sequence"`
	}
	vectors.Load(f, "aes_framing.json", &v)
	key, iv := vectors.Hex(f, v.Key), vectors.Hex(f, v.IV)
	var all []byte
	for _, s := range v.Sequence {
		fr := vectors.Hex(f, s.Frame)
		f.Add(fr, uint8(1), false)
		all = append(all, fr...)
	}
	f.Add(all, uint8(3), false)
	f.Add(all, uint8(255), true)
	f.Add(append(all[:len(all)-1:len(all)-1], 0xFF), uint8(7), false) // bad padding at the end
	f.Add([]byte{0, 0}, uint8(2), false)
	f.Add([]byte{0x04, 0x10}, uint8(2), true)
	f.Add([]byte{0, 17, 1}, uint8(2), false)

	block, err := aes.NewCipher(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8, core bool) {
		limit := frame.PhotonMaxFrame
		if core {
			limit = frame.CoreMaxFrame
		}
		var iv16 [16]byte
		copy(iv16[:], iv)
		in := newFrameIn(&chunkReader{stream, int(chunk%64) + 1}, block, iv16, limit)
		ref := frame.NewReader(bytes.NewReader(stream), key, iv, limit)
		for i := 0; ; i++ {
			got, gerr := in.next()
			want, werr := ref.ReadFrame()
			if errClass(gerr) != errClass(werr) {
				t.Fatalf("frame %d: frameIn error %v, frame.Reader %v", i, gerr, werr)
			}
			if gerr != nil {
				return
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("frame %d: frameIn %x, frame.Reader %x", i, got, want)
			}
			if len(got) >= limit {
				t.Fatalf("frame %d: %d bytes of plaintext over a limit of %d", i, len(got), limit)
			}
		}
	})
}

// FuzzRoute: any sequence of decrypted device messages is routed without
// a panic; a message that ends the session does so with a protocol error;
// the device counter only moves forward by the rules of §4.2; requests
// stay bounded.
func FuzzRoute(f *testing.F) {
	for _, file := range []string{"session_fixture_photon08.json", "session_fixture_photon07.json"} {
		var fx sessionFixture
		vectors.Load(f, file, &fx)
		var seq []byte
		for _, fr := range fx.Frames {
			if fr.Direction == "device->server" {
				c := vectors.Hex(f, fr.CoAP)
				seq = append(append(seq, byte(len(c))), c...)
			}
		}
		f.Add(seq)
	}
	f.Add([]byte{4, 0x40, 0, 0, 1, 4, 0x40, 0, 0, 1})             // duplicate ping
	f.Add([]byte{5, 0x70, 0, 0, 0, 0})                            // bad version
	f.Add([]byte{7, 0x41, 1, 0, 9, 7, 0xb1, 0x74, 1, 0})          // GetTime
	f.Add([]byte{6, 0x61, 0x45, 0, 1, 1, 0xFF, 4, 0x60, 0, 0, 2}) // stray ACKs

	tk := loadKeys(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, err := NewServer(Config{
			Keys:      func(keys.DeviceID, *rsa.PublicKey) (*rsa.PublicKey, error) { return nil, keys.ErrUnknownDevice },
			ServerKey: tk.server,
		})
		if err != nil {
			t.Fatal(err)
		}
		c1, c2 := net.Pipe()
		defer c2.Close()
		s := newSession(srv, c1, &handshake.Session{Kind: handshake.Photon}, srv.cfg.Logger)
		s.armTimers() // the first Describe, as after a Hello
		first := true
		for len(data) > 0 {
			n := int(data[0])
			data = data[1:]
			n = min(n, len(data))
			p := data[:n]
			data = data[n:]
			if first {
				if m, err := msg.Decode(p); err == nil {
					s.recv = m.ID - 1
				}
				first = false
			}
			before := s.recv
			err := s.handleFrame(append([]byte(nil), p...))
			for len(s.out) > 0 {
				<-s.out
			}
			if err != nil {
				if r := classify(err, PeerClosed); r != Protocol {
					t.Fatalf("routing ended with %v (%v), want protocol", r, err)
				}
				break
			}
			if d := s.recv - before; d > 1 {
				t.Fatalf("device counter moved from %#04x to %#04x", before, s.recv)
			}
			s.mu.Lock()
			pending := len(s.tokens.active)
			s.mu.Unlock()
			if pending > 256 {
				t.Fatalf("%d pending requests", pending)
			}
		}
		s.fail(Closed, nil)
		s.end()
		srv.deliveries.Wait()
	})
}
