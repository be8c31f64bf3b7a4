package coapdev

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// healthy starts a well-behaved device whose session must survive a bad
// neighbour; alive checks it afterwards.
type healthy struct {
	d *tdev
	s *Session
}

func startHealthy(t *testing.T, ts *testServer) healthy {
	t.Helper()
	d := dialDevice(t, ts, testID(1000), handshake.Photon)
	s := d.start(ts, heaterJSON)
	recv(t, ts.rec.started, "healthy start")
	return healthy{d, s}
}

func (h healthy) alive(t *testing.T, ts *testServer) {
	t.Helper()
	ctx := context.Background()
	e := asyncErr(func() error { return h.s.Ping(ctx) })
	h.d.send(msg.NewEmptyAck(h.d.expect(msg.KindPing).ID))
	if r := recv(t, e, "healthy ping"); r.err != nil {
		t.Fatalf("healthy session: %v", r.err)
	}
	c := async(func() (int32, error) { return h.s.Call(ctx, "heater", "on") })
	m := h.d.expect(msg.KindFunctionCall)
	h.d.send(msg.NewAck(m.ID, m.Token, msg.Changed, msg.EncodeReturn(1)))
	if r := recv(t, c, "healthy call"); r.err != nil || r.v != 1 {
		t.Fatalf("healthy call: %d, %v", r.v, r.err)
	}
	if h.s.Err() != nil || ts.srv.Session(h.s.ID()) != h.s {
		t.Fatal("healthy session gone")
	}
	select {
	case s := <-ts.rec.started:
		t.Fatalf("a bad peer started a session: %v", s.ID())
	default:
	}
}

// rawHandshake reads the nonce and returns it, for peers that misbehave
// during the handshake.
func rawNonce(t *testing.T, conn net.Conn) []byte {
	t.Helper()
	conn.SetDeadline(time.Now().Add(waitLong))
	nonce := make([]byte, handshake.NonceSize)
	if _, err := io.ReadFull(conn, nonce); err != nil {
		t.Fatal(err)
	}
	return nonce
}

// expectServerClose waits for the server to close conn.
func expectServerClose(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(waitLong))
	if _, err := io.Copy(io.Discard, conn); err != nil && !isReset(err) {
		t.Fatalf("waiting for the server to close: %v", err)
	}
}

func encryptBlock2(t *testing.T, pub *rsa.PublicKey, plain []byte) []byte {
	t.Helper()
	//lint:ignore SA1019 the protocol fixes PKCS#1 v1.5 (spark-protocol.md §2.1)
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, plain) //nolint:staticcheck // the protocol fixes PKCS#1 v1.5
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// TestBadHandshake: every way a peer can fail before its session starts
// ends the connection with its reason, counted in Stats, without a
// SessionStarted, and harms no other session.
func TestBadHandshake(t *testing.T) {
	otherKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want CloseReason
		peer func(t *testing.T, ts *testServer)
	}{
		{"cut short", Handshake, func(t *testing.T, ts *testServer) {
			conn := ts.dial(t)
			rawNonce(t, conn)
			conn.Write(make([]byte, 100))
			conn.Close()
		}},
		{"garbage block", Decrypt, func(t *testing.T, ts *testServer) {
			conn := ts.dial(t)
			defer conn.Close()
			rawNonce(t, conn)
			junk := make([]byte, handshake.Block2Size)
			rand.Read(junk)
			conn.Write(junk)
			expectServerClose(t, conn)
		}},
		{"wrong nonce", BadNonce, func(t *testing.T, ts *testServer) {
			conn := ts.dial(t)
			defer conn.Close()
			nonce := rawNonce(t, conn)
			nonce[0] ^= 1
			id := testID(1)
			conn.Write(encryptBlock2(t, &ts.tk.server.PublicKey, append(nonce, id[:]...)))
			expectServerClose(t, conn)
		}},
		{"unknown device", UnknownDevice, func(t *testing.T, ts *testServer) {
			conn := ts.dial(t)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(waitLong))
			_, err := handshake.Client(conn, handshake.ClientConfig{
				ServerKey: &ts.tk.server.PublicKey, DeviceKey: ts.tk.device, DeviceID: testID(666), Kind: handshake.Core,
			})
			if err == nil {
				t.Fatal("handshake of an unknown device succeeded")
			}
		}},
		{"known id, other key", KeyMismatch, func(t *testing.T, ts *testServer) {
			ts.keys.add(testID(7), &ts.tk.device.PublicKey)
			conn := ts.dial(t)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(waitLong))
			_, err := handshake.Client(conn, handshake.ClientConfig{
				ServerKey: &ts.tk.server.PublicKey, DeviceKey: otherKey, DeviceID: testID(7), Kind: handshake.Photon,
			})
			if err == nil {
				t.Fatal("handshake with another key succeeded")
			}
		}},
		{"one byte at a time", Handshake, func(t *testing.T, ts *testServer) {
			conn := ts.dial(t)
			defer conn.Close()
			rawNonce(t, conn)
			start := time.Now()
			for i := 0; ; i++ {
				time.Sleep(20 * time.Millisecond) // the trickle itself
				if _, err := conn.Write([]byte{byte(i)}); err != nil {
					break
				}
				if i > 255 {
					t.Fatal("the server read the whole block from a trickle")
				}
				if time.Since(start) > waitLong {
					t.Fatal("not cut")
				}
			}
		}},
		{"zero frame instead of hello", Protocol, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Photon)
			d.sendRaw([]byte{0, 0})
			d.expectClosed()
		}},
		{"huge frame instead of hello", TooLarge, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Photon)
			d.sendRaw([]byte{0x20, 0x00})
			d.expectClosed()
		}},
		{"misaligned frame", Protocol, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Core)
			d.sendRaw(append([]byte{0, 17}, make([]byte, 17)...))
			d.expectClosed()
		}},
		{"bad padding", Decrypt, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Core)
			d.sendRaw(d.badPadding())
			d.expectClosed()
		}},
		{"undecodable hello", Protocol, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Photon)
			d.sendPlain([]byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF})
			d.expectClosed()
		}},
		{"first message not a hello", Protocol, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Photon)
			d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "x", nil, 60, false))
			d.expectClosed()
		}},
		{"short hello payload", Protocol, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Photon)
			d.send(msg.NewHello(d.next(), nil, []byte{1, 2, 3}))
			d.expectClosed()
		}},
		{"no hello", Handshake, func(t *testing.T, ts *testServer) {
			d := dialDevice(t, ts, testID(2), handshake.Photon)
			d.expectClosed() // at the handshake deadline
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.HandshakeTimeout = 500 * time.Millisecond })
			h := startHealthy(t, ts)
			tc.peer(t, ts)
			waitFor(t, waitLong, "the failure count", func() bool { return ts.failures(tc.want) == 1 })
			h.alive(t, ts)
			st := ts.srv.Stats()
			if st.HandshakesOK != 1 || len(st.HandshakesFailed) != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestBadFrames: every framing, CoAP or counter error in a running session
// ends it with its reason; another session goes on.
func TestBadFrames(t *testing.T) {
	tests := []struct {
		name string
		kind handshake.Kind
		want CloseReason
		send func(d *tdev)
	}{
		{"zero length", handshake.Photon, Protocol, func(d *tdev) { d.sendRaw([]byte{0, 0}) }},
		{"over the core limit", handshake.Core, TooLarge, func(d *tdev) { d.sendRaw([]byte{0x02, 0x90}) }},     // 656
		{"over the photon limit", handshake.Photon, TooLarge, func(d *tdev) { d.sendRaw([]byte{0x04, 0x10}) }}, // 1040
		{"not a multiple of 16", handshake.Photon, Protocol, func(d *tdev) { d.sendRaw(append([]byte{0, 33}, make([]byte, 33)...)) }},
		{"bad padding", handshake.Photon, Decrypt, func(d *tdev) { d.sendRaw(d.badPadding()) }},
		{"undecodable CoAP", handshake.Core, Protocol, func(d *tdev) { d.sendPlain([]byte{0x70, 0x00, 0x00}) }},
		{"counter jump", handshake.Photon, Protocol, func(d *tdev) {
			d.id += 2
			d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.id, "jump", nil, 60, false))
		}},
		{"counter back", handshake.Core, Protocol, func(d *tdev) {
			d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.id-3, "old", nil, 60, false))
		}},
		{"peer closes", handshake.Core, PeerClosed, func(d *tdev) { d.conn.Close() }},
		{"peer closes mid-frame", handshake.Core, PeerClosed, func(d *tdev) {
			d.sendRaw([]byte{0, 32, 1, 2, 3})
			d.conn.Close()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			h := startHealthy(t, ts)
			d := dialDevice(t, ts, testID(1), tc.kind)
			s := d.start(ts, heaterJSON)
			recv(t, ts.rec.started, "start")
			tc.send(d)
			if r := ts.sessionEnd(t, s); r != tc.want {
				t.Fatalf("reason %v (%v), want %v", r, s.Err(), tc.want)
			}
			if tc.want != PeerClosed {
				d.expectClosed()
			}
			end := recv(t, ts.rec.ended, "end")
			if end.s != s || !errors.Is(end.err, s.Err()) {
				t.Fatalf("SessionEnded(%v)", end.err)
			}
			h.alive(t, ts)
			if n := ts.srv.Stats().SessionsEnded[tc.want.String()]; n != 1 {
				t.Errorf("SessionsEnded[%v] = %d", tc.want, n)
			}
		})
	}
}

// TestHandshakeSlots: with every slot taken, a handshake waits and fails
// at its deadline; with one slot, concurrent handshakes take turns.
func TestHandshakeSlots(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.MaxHandshakes = 1
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	ts.srv.slots <- struct{}{} // held elsewhere
	conn := ts.dial(t)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitLong))
	ts.keys.add(testID(1), &ts.tk.device.PublicKey)
	_, err := handshake.Client(conn, handshake.ClientConfig{
		ServerKey: &ts.tk.server.PublicKey, DeviceKey: ts.tk.device, DeviceID: testID(1), Kind: handshake.Core,
	})
	if err == nil {
		t.Fatal("handshake went through without a slot")
	}
	waitFor(t, waitLong, "failure", func() bool { return ts.failures(Handshake) == 1 })
	<-ts.srv.slots

	// Four devices at once through one slot. Each waits its turn within
	// its handshake deadline, so a slow machine gets a long one.
	ts = startServer(t, func(c *Config) {
		c.MaxHandshakes = 1
		c.HandshakeTimeout = waitLong
	})
	done := make(chan struct{}, 4)
	for i := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			d := dialDevice(t, ts, testID(10+i), handshake.Photon)
			d.hello()
		}()
	}
	for range 4 {
		recv(t, done, "device")
	}
	waitFor(t, waitLong, "sessions", func() bool { return ts.srv.Stats().Sessions == 4 })
	if n := len(ts.srv.slots); n != 0 {
		t.Fatalf("%d slots still held", n)
	}
}

// TestIdleConnections: 1,000 connections that never send a byte all time
// out at the handshake deadline and are released: the goroutines and the
// heap go back to where they were.
func TestIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections")
	}
	const n = 1000
	ts := startServer(t, func(c *Config) { c.HandshakeTimeout = 3 * time.Second })
	h := startHealthy(t, ts)
	runtime.GC()
	goroutines := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, waitLong, "all accepted", func() bool {
		return ts.srv.Stats().Handshaking+int64(ts.failures(Handshake)) == n
	})
	if ts.failures(Handshake) == 0 {
		var during runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&during)
		t.Logf("heap per handshaking connection (client and server side): %d bytes",
			(int64(during.HeapAlloc)-int64(before.HeapAlloc))/n)
	}

	waitFor(t, waitLong, "all timed out", func() bool { return ts.srv.Stats().Connections == 1 })
	if got := ts.failures(Handshake); got != n {
		t.Fatalf("%d handshake timeouts, want %d", got, n)
	}
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(waitLong))
		b, err := io.ReadAll(c)
		if err != nil && !isReset(err) || len(b) != handshake.NonceSize {
			t.Fatalf("read %d bytes, %v; want the nonce then EOF", len(b), err)
		}
		c.Close()
	}
	conns = nil
	waitFor(t, waitLong, "goroutines back", func() bool { return runtime.NumGoroutine() <= goroutines })
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grow := int64(after.HeapAlloc) - int64(before.HeapAlloc); grow > 1<<20 {
		t.Errorf("heap grew by %d bytes after the connections were released", grow)
	}
	h.alive(t, ts)
}

// TestTokenTable: round-robin over 1..255, a pending token is never
// reused, a quarantined one not before its time, and 255 pending is full.
func TestTokenTable(t *testing.T) {
	var tt tokenTable
	now := int64(1000)
	var ps []*pending
	for i := range 255 {
		tok, ok := tt.alloc(now)
		if !ok || int(tok) != i+1 {
			t.Fatalf("alloc %d = %d, %v", i, tok, ok)
		}
		p := &pending{kind: reqGet, token: tok, id: uint16(i)}
		tt.add(p)
		ps = append(ps, p)
	}
	if _, ok := tt.alloc(now); ok {
		t.Fatal("256th token")
	}
	// Free 10 (answered) and quarantine 20 (timed out) until now+50.
	for _, p := range ps[100:110] {
		if !tt.remove(p, 0) {
			t.Fatal("remove")
		}
	}
	for _, p := range ps[200:220] {
		tt.remove(p, now+50)
	}
	if tt.remove(ps[100], 0) {
		t.Fatal("removed twice")
	}
	if _, st := tt.byToken(201, now); st != tokenLate {
		t.Fatalf("quarantined token status %v", st)
	}
	if _, st := tt.byToken(101, now); st != tokenUnknown {
		t.Fatalf("free token status %v", st)
	}
	if p, st := tt.byToken(50, now); st != tokenPending || p != ps[49] {
		t.Fatalf("pending token: %v %v", p, st)
	}
	if tt.byID(49) != ps[49] || tt.byID(60000) != nil {
		t.Fatal("byID")
	}
	var got []byte
	for {
		tok, ok := tt.alloc(now)
		if !ok {
			break
		}
		got = append(got, tok)
		tt.add(&pending{token: tok})
	}
	if len(got) != 10 || got[0] != 101 {
		t.Fatalf("allocated %v while the rest is pending or quarantined", got)
	}
	// After the quarantine the 20 come back.
	n := 0
	for {
		if _, ok := tt.alloc(now + 50); !ok {
			break
		}
		n++
	}
	if n != 20 {
		t.Fatalf("%d tokens back from quarantine, want 20", n)
	}
	if all := tt.drain(); len(all) != 255-30+10 {
		t.Fatalf("drain %d", len(all))
	}
}

// TestReasons: every reason has a distinct label.
func TestReasons(t *testing.T) {
	seen := map[string]bool{}
	for r := PeerClosed; r <= Closed; r++ {
		s := r.String()
		if seen[s] || s == "" {
			t.Fatalf("label %q", s)
		}
		seen[s] = true
	}
	if CloseReason(200).String() != "reason(200)" {
		t.Fatal("unknown reason label")
	}
	e := &SessionError{Reason: Decrypt, Err: frame.ErrDecrypt}
	if !errors.Is(e, frame.ErrDecrypt) || e.Error() == "" {
		t.Fatal("SessionError")
	}
	if _, err := NewServer(Config{}); err == nil {
		t.Fatal("NewServer without keys")
	}
}

// recordHandler is a slog.Handler that keeps Warn records' messages and
// device attributes.
type recordHandler struct {
	mu   *sync.Mutex
	warn *[]string
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h recordHandler) WithGroup(string) slog.Handler            { return h }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	dev := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "device" {
			dev = a.Value.String()
		}
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.warn = append(*h.warn, r.Message+" "+dev)
	return nil
}

// TestRefusedWarn: every refused device gets its own Warn line (an
// operator must register it), repeated at most once a minute per device.
func TestRefusedWarn(t *testing.T) {
	var mu sync.Mutex
	var warns []string
	ts := startServer(t, func(c *Config) { c.Logger = slog.New(recordHandler{&mu, &warns}) })
	try := func(id keys.DeviceID, k handshake.Kind) {
		conn := ts.dial(t)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(waitLong))
		if _, err := handshake.Client(conn, handshake.ClientConfig{
			ServerKey: &ts.tk.server.PublicKey, DeviceKey: ts.tk.device, DeviceID: id, Kind: k,
		}); err == nil {
			t.Fatal("unknown device accepted")
		}
	}
	try(testID(1), handshake.Core)
	try(testID(2), handshake.Photon)
	try(testID(1), handshake.Core) // again within the minute: Debug only
	waitFor(t, waitLong, "refusals", func() bool { return ts.failures(UnknownDevice) == 3 })
	mu.Lock()
	defer mu.Unlock()
	want := []string{"device refused " + testID(1).String(), "device refused " + testID(2).String()}
	if !slices.Equal(warns, want) {
		t.Fatalf("warnings %q, want %q", warns, want)
	}
}

// TestRateLimit: one per key per interval, suppressed counted, bounded.
func TestRateLimit(t *testing.T) {
	r := rateLimit{every: time.Minute, max: 3}
	now := time.Unix(1000, 0)
	if _, ok := r.allow(testID(1), now); !ok {
		t.Fatal("first")
	}
	if _, ok := r.allow(testID(1), now.Add(time.Second)); ok {
		t.Fatal("second within the interval")
	}
	if n, ok := r.allow(testID(1), now.Add(time.Minute)); !ok || n != 1 {
		t.Fatalf("after the interval: %d %v", n, ok)
	}
	for i := 2; i <= 5; i++ {
		if _, ok := r.allow(testID(i), now.Add(time.Duration(i)*time.Second)); !ok {
			t.Fatalf("id %d", i)
		}
	}
	if len(r.seen) != 3 {
		t.Fatalf("%d keys remembered, want 3", len(r.seen))
	}
	// id 1 was seen last at +1 min, ids 2 and 3 before: they went.
	for _, i := range []int{1, 4, 5} {
		if _, ok := r.seen[testID(i)]; !ok {
			t.Fatalf("id %d evicted, want the oldest ones (2, 3) gone", i)
		}
	}
}
