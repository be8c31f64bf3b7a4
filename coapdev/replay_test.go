package coapdev

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// TestReplayFixture drives the Server with the device side of the recorded
// Photon sessions, byte for byte (same nonce and session material through
// the handshake randomness, the recorded device frames), and requires
// every server frame to be the recorded one byte for byte: the same CoAP,
// order, message ids and tokens, hence the same ciphertext and IV chain.
// The recordings come from the real firmware, which accepted every server
// frame; so this shows the server speaks as the device expects, and accepts
// what the device sends (the 0.8 ACKs that use up a device id, the empty
// Describe before the full one, separate function returns, system events).
func TestReplayFixture(t *testing.T) {
	for _, file := range []string{"session_fixture_photon08.json", "session_fixture_photon07.json"} {
		t.Run(file, func(t *testing.T) { replay(t, file) })
	}
}

func replay(t *testing.T, file string) {
	var f sessionFixture
	vectors.Load(t, file, &f)
	nonce, material := vectors.Hex(t, f.Nonce), vectors.Hex(t, f.Material)

	// The server's message ids and the GetTime answer come from the
	// recording: the first server frame is the Hello (id start + 1), and
	// the answer to GetTime holds the recorded time.
	var idStart uint16
	var now time.Time
	for i, fr := range f.Frames {
		m, err := msg.Decode(vectors.Hex(t, fr.CoAP))
		if err != nil {
			t.Fatalf("frame %d: %v", fr.N, err)
		}
		if fr.Direction == "server->device" && idStart == 0 {
			idStart = m.ID - 1
		}
		if m.Kind() == msg.KindGetTime {
			a, _ := msg.Decode(vectors.Hex(t, f.Frames[i+1].CoAP))
			now = time.Unix(int64(binary.BigEndian.Uint32(a.Payload)), 0)
		}
	}

	var id keys.DeviceID
	copy(id[:], vectors.Hex(t, f.DeviceID))
	tk := loadKeys(t)
	ts := startServerHooks(t, func(c *Config) {
		c.Now = func() time.Time { return now }
	}, testHooks{
		rand:  io.MultiReader(bytes.NewReader(nonce), bytes.NewReader(material)),
		msgID: func() uint16 { return idStart },
	}, map[keys.DeviceID]*rsa.PublicKey{id: &tk.device.PublicKey})

	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitLong))

	// Handshake: the recorded block 2 was encrypted for this nonce.
	got := make([]byte, handshake.NonceSize)
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, nonce) {
		t.Fatalf("nonce %x, %v; want %x", got, err, nonce)
	}
	if _, err := conn.Write(vectors.Hex(t, f.Block2)); err != nil {
		t.Fatal(err)
	}
	blob := make([]byte, handshake.ServerBlobSize)
	if _, err := io.ReadFull(conn, blob); err != nil {
		t.Fatal(err)
	}
	m, err := handshake.OpenSessionKey(ts.tk.device, &ts.tk.server.PublicKey, blob)
	if err != nil || !bytes.Equal(m, material) {
		t.Fatalf("session key %x, %v; want %x", m, err, material)
	}

	block, err := aes.NewCipher(material[:16])
	if err != nil {
		t.Fatal(err)
	}
	var sess *Session
	var pending chan error // the API call whose answer is being replayed
	var check func()       // its result check
	for _, fr := range f.Frames {
		raw := vectors.Hex(t, fr.Frame)
		coap := vectors.Hex(t, fr.CoAP)
		if fr.Direction == "device->server" {
			if _, err := conn.Write(raw); err != nil {
				t.Fatalf("frame %d: %v", fr.N, err)
			}
			continue
		}
		want, _ := msg.Decode(coap)
		// A server request the application makes: start the API call.
		if act := action(want); act != nil {
			if pending != nil {
				if err := <-pending; err != nil {
					t.Fatalf("before frame %d: %v", fr.N, err)
				}
				check()
			}
			if sess == nil {
				sess = recv(t, ts.rec.started, "session start")
				// The calls need the application description (frame 13).
				waitFor(t, waitLong, "application description", func() bool {
					_, app := sess.Description()
					return app
				})
			}
			pending = make(chan error, 1)
			check = act(t, sess, pending, f, fr.N)
		}
		hdr := make([]byte, 2)
		if _, err := io.ReadFull(conn, hdr); err != nil {
			t.Fatalf("frame %d (%s): %v", fr.N, fr.Description, err)
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr))
		if _, err := io.ReadFull(conn, body); err != nil {
			t.Fatalf("frame %d: %v", fr.N, err)
		}
		if gotFrame := append(hdr, body...); !bytes.Equal(gotFrame, raw) {
			var iv [16]byte
			copy(iv[:], vectors.Hex(t, fr.IV))
			p, err := frame.Open(block, &iv, body)
			t.Fatalf("frame %d (%s): server sent CoAP %x (%v), want %x", fr.N, fr.Description, p, err, coap)
		}
	}
	if pending != nil {
		if err := <-pending; err != nil {
			t.Fatal(err)
		}
		check()
	}

	// The handler got the start, the four events and, once the device
	// leaves, the end.
	var names []string
	for range 4 {
		e := recv(t, ts.rec.events, "event")
		names = append(names, e.e.Name)
	}
	wantNames := []string{"spark/hardware/max_binary", "spark/hardware/ota_chunk_size", "temperature", "temperature"}
	if !equalStrings(names, wantNames) {
		t.Errorf("events %q, want %q", names, wantNames)
	}
	info := sess.Info()
	if info.Kind != handshake.Photon || info.Hello.ProductID != 6 || info.Hello.PlatformID != 6 {
		t.Errorf("info %+v", info)
	}
	if subs := sess.Subscriptions(); len(subs) != 2 || subs[0].Prefix != "spark" || subs[1].Prefix != "heater/" {
		t.Errorf("subscriptions %+v", subs)
	}
	conn.Close()
	end := recv(t, ts.rec.ended, "session end")
	var se *SessionError
	if !errors.As(end.err, &se) || se.Reason != PeerClosed {
		t.Errorf("session ended with %v, want peer_closed", end.err)
	}
	if st := ts.srv.Stats(); st.UnknownTokens+st.LateResponses+st.UnknownAcks+st.Duplicates+st.UnknownRequests != 0 {
		t.Errorf("stats %+v: want no unmatched or unknown message", st)
	}
}

// action returns the API call that makes the server send want, or nil for
// what the server sends on its own. The call runs in a goroutine and
// reports on done; the returned func checks its result.
func action(want msg.Message) func(t *testing.T, s *Session, done chan error, f sessionFixture, n int) func() {
	ctx := context.Background()
	switch want.Kind() {
	case msg.KindVariableRequest:
		return func(t *testing.T, s *Session, done chan error, f sessionFixture, n int) func() {
			var v msg.Value
			go func() {
				var err error
				v, err = s.Get(ctx, want.Path[1])
				done <- err
			}()
			ans := answerTo(t, f, n)
			return func() {
				if !bytes.Equal(v.Encode(), ans.Payload) {
					t.Errorf("Get(%s) = %+v, device sent %x", want.Path[1], v, ans.Payload)
				}
			}
		}
	case msg.KindFunctionCall:
		return func(t *testing.T, s *Session, done chan error, f sessionFixture, n int) func() {
			var r int32
			go func() {
				var err error
				r, err = s.Call(ctx, want.Path[1], string(want.Query[0]))
				done <- err
			}()
			ans := answerTo(t, f, n)
			return func() {
				if w, _ := msg.DecodeReturn(ans.Payload); r != w {
					t.Errorf("Call(%s, %q) = %d, want %d", want.Path[1], want.Query[0], r, w)
				}
			}
		}
	case msg.KindEvent:
		return func(t *testing.T, s *Session, done chan error, _ sessionFixture, _ int) func() {
			e, err := msg.ParseEvent(want)
			if err != nil {
				t.Fatal(err)
			}
			go func() { done <- s.Send(ctx, e) }()
			return func() {}
		}
	case msg.KindSignal:
		return func(t *testing.T, s *Session, done chan error, _ sessionFixture, _ int) func() {
			go func() { done <- s.Signal(ctx, want.Query[0][0] == 1) }()
			return func() {}
		}
	case msg.KindPing:
		return func(t *testing.T, s *Session, done chan error, _ sessionFixture, _ int) func() {
			go func() { done <- s.Ping(ctx) }()
			return func() {}
		}
	}
	return nil
}

// answerTo returns the device's answer to the server request in frame n:
// the next device frame with a payload and the request's token.
func answerTo(t *testing.T, f sessionFixture, n int) msg.Message {
	req, _ := msg.Decode(vectors.Hex(t, f.Frames[n].CoAP))
	for _, fr := range f.Frames[n+1:] {
		m, _ := msg.Decode(vectors.Hex(t, fr.CoAP))
		if fr.Direction == "device->server" && bytes.Equal(m.Token, req.Token) && len(m.Payload) > 0 {
			return m
		}
	}
	t.Fatalf("frame %d: no answer in the recording", n)
	return msg.Message{}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
