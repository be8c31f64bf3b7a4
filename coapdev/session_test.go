package coapdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// result of an API call run in the background.
type res[T any] struct {
	v   T
	err error
}

// async runs f in a goroutine; the test reads the result from the channel.
func async[T any](f func() (T, error)) <-chan res[T] {
	ch := make(chan res[T], 1)
	go func() {
		v, err := f()
		ch <- res[T]{v, err}
	}()
	return ch
}

func asyncErr(f func() error) <-chan res[struct{}] {
	return async(func() (struct{}, error) { return struct{}{}, f() })
}

var kinds = []struct {
	name string
	kind handshake.Kind
}{
	{"core", handshake.Core},
	{"photon", handshake.Photon},
}

// TestRequests covers every server request and both answer forms:
// piggybacked ACK, empty ACK + separate NON, and separate CON (which the
// server ACKs), for a Core and a Photon.
func TestRequests(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ctx := context.Background()
			ts := startServer(t, nil)
			d := dialDevice(t, ts, testID(1), k.kind)
			s := d.start(ts, heaterJSON)
			if s.Info().Kind != k.kind {
				t.Errorf("kind %v, want %v", s.Info().Kind, k.kind)
			}

			// Call, piggybacked answer.
			c := async(func() (int32, error) { return s.Call(ctx, "heater", "on") })
			m := d.expect(msg.KindFunctionCall)
			if m.Type != msg.Confirmable || len(m.Token) != 1 || !slices.Equal(m.Path, []string{"f", "heater"}) ||
				len(m.Query) != 1 || string(m.Query[0]) != "on" {
				t.Fatalf("function call %+v", m)
			}
			d.send(msg.NewAck(m.ID, m.Token, msg.Changed, msg.EncodeReturn(1)))
			if r := recv(t, c, "call"); r.err != nil || r.v != 1 {
				t.Fatalf("Call = %d, %v; want 1", r.v, r.err)
			}

			// Call with an empty argument: empty ACK, then a separate NON.
			c = async(func() (int32, error) { return s.Call(ctx, "heater", "") })
			m = d.expect(msg.KindFunctionCall)
			if len(m.Query) != 1 || len(m.Query[0]) != 0 {
				t.Fatalf("empty argument: query %q, want one empty option", m.Query)
			}
			d.send(msg.NewEmptyAck(m.ID))
			d.send(msg.NewResponse(msg.NonConfirmable, d.next(), m.Token, msg.Changed, msg.EncodeReturn(-1)))
			if r := recv(t, c, "call"); r.err != nil || r.v != -1 {
				t.Fatalf("Call = %d, %v; want -1", r.v, r.err)
			}

			// A separate CON answer gets an empty ACK.
			c = async(func() (int32, error) { return s.Call(ctx, "heater", "off") })
			m = d.expect(msg.KindFunctionCall)
			d.send(msg.NewEmptyAck(m.ID))
			d.send(msg.NewResponse(msg.Confirmable, d.next(), m.Token, msg.Changed, msg.EncodeReturn(0)))
			if a := d.expect(msg.KindEmptyAck); a.ID != d.id || len(a.Token) != 0 {
				t.Fatalf("ack of separate CON: %+v, want id %#04x, no token", a, d.id)
			}
			if r := recv(t, c, "call"); r.err != nil || r.v != 0 {
				t.Fatalf("Call = %d, %v; want 0", r.v, r.err)
			}

			// An error code answers with a *ResponseError.
			c = async(func() (int32, error) { return s.Call(ctx, "heater", "x") })
			m = d.expect(msg.KindFunctionCall)
			d.send(msg.NewAck(m.ID, m.Token, msg.BadRequest, nil))
			var re *ResponseError
			if r := recv(t, c, "call"); !errors.As(r.err, &re) || re.Code != msg.BadRequest {
				t.Fatalf("Call = %v, want ResponseError 4.00", r.err)
			}

			// Variables of every type, piggybacked and separate.
			vals := []msg.Value{
				{Type: msg.VarDouble, Double: 48.5},
				{Type: msg.VarInt, Int: -7},
				{Type: msg.VarBool, Bool: true},
				{Type: msg.VarString, String: "hot water"},
			}
			for i, name := range []string{"temp", "state", "on", "name"} {
				g := async(func() (msg.Value, error) { return s.Get(ctx, name) })
				m := d.expect(msg.KindVariableRequest)
				if m.Type != msg.Confirmable || len(m.Token) != 1 || !slices.Equal(m.Path, []string{"v", name}) {
					t.Fatalf("variable request %+v", m)
				}
				if i%2 == 0 {
					d.send(msg.NewAck(m.ID, m.Token, msg.Content, vals[i].Encode()))
				} else { // Device OS ≥ 1.5
					d.send(msg.NewEmptyAck(m.ID))
					d.send(msg.NewResponse(msg.NonConfirmable, d.next(), m.Token, msg.Content, vals[i].Encode()))
				}
				if r := recv(t, g, "get"); r.err != nil || r.v != vals[i] {
					t.Fatalf("Get(%s) = %+v, %v; want %+v", name, r.v, r.err, vals[i])
				}
			}

			// Signal on and off: ACK 2.04.
			for _, on := range []bool{true, false} {
				e := asyncErr(func() error { return s.Signal(ctx, on) })
				m := d.expect(msg.KindSignal)
				want := []byte{0}
				if on {
					want[0] = 1
				}
				if len(m.Query) != 1 || !bytes.Equal(m.Query[0], want) {
					t.Fatalf("signal query %x", m.Query)
				}
				d.send(msg.NewAck(m.ID, m.Token, msg.Changed, nil))
				if r := recv(t, e, "signal"); r.err != nil {
					t.Fatal(r.err)
				}
			}

			// Server ping: empty CON, no token; the device ACKs with its id.
			e := asyncErr(func() error { return s.Ping(ctx) })
			m = d.expect(msg.KindPing)
			if len(m.Token) != 0 {
				t.Fatalf("ping token %x", m.Token)
			}
			d.send(msg.NewEmptyAck(m.ID))
			if r := recv(t, e, "ping"); r.err != nil {
				t.Fatal(r.err)
			}

			// Device ping: empty ACK with the same id and TKL 0.
			d.send(msg.NewPing(d.next()))
			if a := d.expect(msg.KindEmptyAck); a.ID != d.id || len(a.Token) != 0 {
				t.Fatalf("ping ack %+v", a)
			}

			if st := ts.srv.Stats(); st.UnknownTokens+st.UnknownAcks+st.LateResponses != 0 || st.Sessions != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestGetTime: ACK 2.05 with the request's id and token, u32 BE seconds.
func TestGetTime(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ts := startServer(t, func(c *Config) { c.Now = func() time.Time { return now } })
	d := dialDevice(t, ts, testID(1), handshake.Core)
	d.start(ts, heaterJSON)
	d.send(msg.NewGetTime(d.next(), 0x42))
	a := d.expect(msg.KindResponse)
	if a.Type != msg.Acknowledgement || a.Code != msg.Content || a.ID != d.id || !bytes.Equal(a.Token, []byte{0x42}) ||
		binary.BigEndian.Uint32(a.Payload) != uint32(now.Unix()) {
		t.Fatalf("time answer %+v", a)
	}
}

// TestDeviceEvents: events reach the handler in order with name, data, TTL
// and scope; a CON event gets an empty ACK, a NON one nothing; system
// events come too, marked by IsSystemEvent.
func TestDeviceEvents(t *testing.T) {
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)

	d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "temperature", []byte("48.5"), 60, false))
	d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "secret", []byte("x"), 21600, true))
	d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "lake-depth/1", nil, 60, false))
	d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "spark/device/last_reset", []byte("power_down"), 60, true))
	d.send(msg.NewEventFromDevice(msg.Confirmable, d.next(), "with-ack", []byte("1"), 60, false))
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("CON event ack id %#04x, want %#04x", a.ID, d.id)
	}
	// The NON events got nothing: the next message answers this ping.
	d.send(msg.NewPing(d.next()))
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("got %+v, want the ping ack", a)
	}
	want := []msg.Event{
		{Name: "temperature", Data: []byte("48.5"), TTL: 60},
		{Name: "secret", Data: []byte("x"), TTL: 21600, Private: true},
		{Name: "lake-depth/1", TTL: 60},
		{Name: "spark/device/last_reset", Data: []byte("power_down"), TTL: 60, Private: true},
		{Name: "with-ack", Data: []byte("1"), TTL: 60},
	}
	for _, w := range want {
		got := recv(t, ts.rec.events, "event")
		if got.s != s {
			t.Errorf("event from another session")
		}
		if diff := cmp.Diff(w, got.e); diff != "" {
			t.Errorf("event (-want +got):\n%s", diff)
		}
		if IsSystemEvent(w.Name) != strings.HasPrefix(w.Name, "spark") {
			t.Errorf("IsSystemEvent(%q) wrong", w.Name)
		}
	}
	if !IsSystemEvent("Particle/x") || IsSystemEvent("heater") {
		t.Error("IsSystemEvent")
	}
}

// TestSend: events go to the device only when a Subscribe prefix matches,
// NON with no token, the name split on '/' and Max-Age always present.
func TestSend(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ctx := context.Background()
			ts := startServer(t, nil)
			d := dialDevice(t, ts, testID(1), k.kind)
			s := d.start(ts, heaterJSON) // subscribed to "app/"
			d.subscribe("heater/")
			if !s.Subscribed("heater/cmd") || s.Subscribed("other") {
				t.Fatal("Subscribed")
			}
			if err := s.Send(ctx, msg.Event{Name: "heater/cmd", Data: []byte("on")}); err != nil {
				t.Fatal(err)
			}
			m := d.expect(msg.KindEvent)
			if m.Type != msg.NonConfirmable || len(m.Token) != 0 || !slices.Equal(m.Path, []string{"e", "heater", "cmd"}) ||
				!m.HasMaxAge || m.MaxAge != 60 || string(m.Payload) != "on" {
				t.Fatalf("event to device %+v", m)
			}
			if err := s.Send(ctx, msg.Event{Name: "app/x", TTL: 5, Private: true}); err != nil {
				t.Fatal(err)
			}
			if m := d.expect(msg.KindEvent); m.Path[0] != "E" || m.MaxAge != 5 {
				t.Fatalf("private event %+v", m)
			}

			tooLong := strings.Repeat("d", s.Limits().EventData+1)
			for _, tc := range []struct {
				e    msg.Event
				want error
			}{
				{msg.Event{Name: "other"}, ErrNotSubscribed},
				{msg.Event{Name: ""}, ErrNameTooLong},
				{msg.Event{Name: "app/" + strings.Repeat("n", 60)}, ErrNameTooLong},
				{msg.Event{Name: "app/x", Data: []byte(tooLong)}, ErrDataTooLong},
			} {
				if err := s.Send(ctx, tc.e); !errors.Is(err, tc.want) {
					t.Errorf("Send(%q, %d bytes) = %v, want %v", tc.e.Name, len(tc.e.Data), err, tc.want)
				}
			}
			// Nothing was sent for those: the next message is the ping ack.
			d.send(msg.NewPing(d.next()))
			if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
				t.Fatalf("got %+v, want the ping ack", a)
			}
			want := []msg.Subscription{{Prefix: "app/"}, {Prefix: "heater/"}}
			if diff := cmp.Diff(want, s.Subscriptions()); diff != "" {
				t.Errorf("subscriptions (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLimits: names and arguments over the device's limits are refused
// before anything is sent.
func TestLimits(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ctx := context.Background()
			ts := startServer(t, nil)
			d := dialDevice(t, ts, testID(1), k.kind)
			s := d.start(ts, heaterJSON)
			lim := s.Limits()
			if k.kind == handshake.Core && (lim.Name != 12 || lim.Arg != 63 || lim.EventData != 63) {
				t.Errorf("core limits %+v", lim)
			}
			long := strings.Repeat("n", lim.Name+1)
			if _, err := s.Call(ctx, long, ""); !errors.Is(err, ErrNameTooLong) {
				t.Errorf("Call(long name) = %v", err)
			}
			if _, err := s.Call(ctx, "heater", strings.Repeat("a", 64)); !errors.Is(err, ErrArgTooLong) {
				t.Errorf("Call(64-byte arg) = %v", err)
			}
			if _, err := s.Get(ctx, long); !errors.Is(err, ErrNameTooLong) {
				t.Errorf("Get(long name) = %v", err)
			}
			// The device saw nothing: the next message answers its ping.
			d.send(msg.NewPing(d.next()))
			if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
				t.Fatalf("got %+v, want the ping ack", a)
			}
			// 63 bytes go through.
			arg := strings.Repeat("a", 63)
			c := async(func() (int32, error) { return s.Call(ctx, "heater", arg) })
			m := d.expect(msg.KindFunctionCall)
			if string(m.Query[0]) != arg {
				t.Fatalf("arg %q", m.Query[0])
			}
			d.send(msg.NewAck(m.ID, m.Token, msg.Changed, msg.EncodeReturn(-1)))
			if r := recv(t, c, "call"); r.err != nil {
				t.Fatal(r.err)
			}
		})
	}
}

// TestNotFound: a name missing from the description causes one new
// Describe; still missing is ErrNotFound, found goes on.
func TestNotFound(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)

	c := async(func() (int32, error) { return s.Call(ctx, "nope", "") })
	d.answerDescribe(heaterJSON)
	if r := recv(t, c, "call"); !errors.Is(r.err, ErrNotFound) {
		t.Fatalf("Call(nope) = %v, want ErrNotFound", r.err)
	}

	g := async(func() (msg.Value, error) { return s.Get(ctx, "added") })
	d.answerDescribe(`{"f":["heater"],"v":{"added":2}}`)
	m := d.expect(msg.KindVariableRequest)
	d.send(msg.NewAck(m.ID, m.Token, msg.Content, msg.Value{Type: msg.VarInt, Int: 5}.Encode()))
	if r := recv(t, g, "get"); r.err != nil || r.v.Int != 5 {
		t.Fatalf("Get(added) = %+v, %v", r.v, r.err)
	}
	if got := recv(t, ts.rec.described, "described"); !slices.Equal(got.Functions, []string{"heater"}) {
		t.Errorf("described %+v", got)
	}
	// Describe returns the latest application description without a new
	// request.
	desc, err := s.Describe(ctx)
	if err != nil || desc.Variables["added"] != msg.VarInt {
		t.Fatalf("Describe = %+v, %v", desc, err)
	}
}

// TestDescribeFlow: the first (empty) answer is never the application's;
// Describe waits for the application Describe, here sent after
// AppDescribeDelay since the device neither subscribes nor publishes.
func TestDescribeFlow(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, func(c *Config) { c.AppDescribeDelay = 50 * time.Millisecond })
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	d.hello()
	s := recv(t, ts.rec.started, "start")
	desc := async(func() (msg.Description, error) { return s.Describe(ctx) })
	d.answerDescribe(`{"f":[],"v":{},"p":6,"m":[]}`)
	// A system event does not mean the application runs.
	d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "spark/hardware/max_binary", []byte("1"), 60, true))
	d.answerDescribe(heaterJSON) // after AppDescribeDelay
	r := recv(t, desc, "describe")
	if r.err != nil || !slices.Equal(r.v.Functions, []string{"heater"}) {
		t.Fatalf("Describe = %+v, %v", r.v, r.err)
	}
	// A pushed description (POST d from newer Device OS) replaces it.
	d.send(msg.Message{Type: msg.Confirmable, Code: msg.POST, ID: d.next(), Path: []string{"d"},
		Payload: []byte(`{"f":["heater","boost"],"v":{}}`)})
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("POST d ack %+v", a)
	}
	recv(t, ts.rec.described, "described")
	if got := recv(t, ts.rec.described, "described"); !slices.Equal(got.Functions, []string{"heater", "boost"}) {
		t.Fatalf("pushed description %+v", got)
	}
}

// TestDescribeBad: a Describe answer that does not parse keeps the previous
// description and the session.
func TestDescribeBad(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Core)
	s := d.start(ts, heaterJSON)

	c := async(func() (int32, error) { return s.Call(ctx, "missing", "") })
	d.answerDescribe(`{"f":["missing`)
	if r := recv(t, c, "call"); !errors.Is(r.err, msg.ErrDescribe) {
		t.Fatalf("Call = %v, want a describe error", r.err)
	}
	// A huge one (over msg.MaxDescribeSize) cannot even arrive in a frame a
	// device may send; one that fits but is not an object fails the same.
	c = async(func() (int32, error) { return s.Call(ctx, "missing", "") })
	d.answerDescribe(`[1,2,3]`)
	if r := recv(t, c, "call"); !errors.Is(r.err, msg.ErrDescribe) {
		t.Fatalf("Call = %v, want a describe error", r.err)
	}
	if desc, app := s.Description(); !app || !slices.Equal(desc.Functions, []string{"heater"}) {
		t.Fatalf("description %+v lost", desc)
	}
	if ts.srv.Stats().BadDescriptions != 2 {
		t.Errorf("BadDescriptions %d", ts.srv.Stats().BadDescriptions)
	}
	// The session goes on.
	e := asyncErr(func() error { return s.Ping(ctx) })
	d.send(msg.NewEmptyAck(d.expect(msg.KindPing).ID))
	if r := recv(t, e, "ping"); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestConcurrentRequests: many requests in flight on one session, answered
// out of order, each matched by its token.
func TestConcurrentRequests(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)
	const n = 40
	results := make(chan res[msg.Value], n)
	for range n {
		go func() {
			v, err := s.Get(ctx, "state")
			results <- res[msg.Value]{v, err}
		}()
	}
	var reqs []msg.Message
	seen := map[byte]bool{}
	for range n {
		m := d.expect(msg.KindVariableRequest)
		if seen[m.Token[0]] {
			t.Fatalf("token %d used twice", m.Token[0])
		}
		seen[m.Token[0]] = true
		reqs = append(reqs, m)
	}
	slices.Reverse(reqs)
	for i, m := range reqs {
		v := msg.Value{Type: msg.VarInt, Int: int32(m.Token[0])}
		if i%2 == 0 {
			d.send(msg.NewAck(m.ID, m.Token, msg.Content, v.Encode()))
		} else {
			d.send(msg.NewEmptyAck(m.ID))
			d.send(msg.NewResponse(msg.NonConfirmable, d.next(), m.Token, msg.Content, v.Encode()))
		}
	}
	got := map[byte]bool{}
	for range n {
		r := recv(t, results, "get")
		if r.err != nil {
			t.Fatal(r.err)
		}
		got[byte(r.v.Int)] = true
	}
	if !cmp.Equal(seen, got) {
		t.Fatalf("answers %v, want %v", got, seen)
	}
}

// TestTimeoutLateUnknown: a request times out, its late answer is dropped
// and counted, its token is not reused for a while, and an answer with an
// unknown token is dropped and counted; the session goes on.
func TestTimeoutLateUnknown(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, func(c *Config) { c.RequestTimeout = 100 * time.Millisecond })
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)

	_ = async(func() (msg.Value, error) { return s.Get(ctx, "state") })
	g := async(func() (msg.Value, error) { return s.Get(ctx, "temp") })
	first := d.expect(msg.KindVariableRequest)
	second := d.expect(msg.KindVariableRequest)
	if r := recv(t, g, "get"); !errors.Is(r.err, ErrTimeout) {
		t.Fatalf("Get = %v, want ErrTimeout", r.err)
	}
	waitFor(t, waitLong, "both timeouts", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.tokens.active) == 0
	})
	d.send(msg.NewAck(second.ID, second.Token, msg.Content, msg.Value{Type: msg.VarDouble}.Encode()))
	d.send(msg.NewEmptyAck(first.ID))
	d.send(msg.NewResponse(msg.NonConfirmable, d.next(), first.Token, msg.Content, make([]byte, 4)))
	d.send(msg.NewAck(0x7777, []byte{0xEE}, msg.Content, nil))

	// Round-robin and quarantine: the next tokens are new ones.
	for range 3 {
		g = async(func() (msg.Value, error) { return s.Get(ctx, "state") })
		m := d.expect(msg.KindVariableRequest)
		if m.Token[0] == first.Token[0] || m.Token[0] == second.Token[0] {
			t.Fatalf("token %d reused while quarantined", m.Token[0])
		}
		d.send(msg.NewAck(m.ID, m.Token, msg.Content, make([]byte, 4)))
		if r := recv(t, g, "get"); r.err != nil {
			t.Fatal(r.err)
		}
	}
	st := ts.srv.Stats()
	if st.LateResponses != 2 || st.UnknownTokens != 1 || st.UnknownAcks != 1 {
		t.Errorf("late %d unknown tokens %d unknown acks %d, want 2 1 1", st.LateResponses, st.UnknownTokens, st.UnknownAcks)
	}

	// A caller's ctx ends the wait too.
	cctx, cancel := context.WithCancel(ctx)
	g = async(func() (msg.Value, error) { return s.Get(cctx, "state") })
	d.expect(msg.KindVariableRequest)
	cancel()
	if r := recv(t, g, "get"); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Get = %v, want context.Canceled", r.err)
	}
}

// TestDuplicate: a repeated device CON (same id) is answered again with
// the same answer and processed once; the session stays.
func TestDuplicate(t *testing.T) {
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Core)
	d.start(ts, heaterJSON)
	gt := msg.NewGetTime(d.next(), 9)
	d.send(gt)
	a1 := d.expect(msg.KindResponse)
	d.send(gt)
	a2 := d.expect(msg.KindResponse)
	if !cmp.Equal(a1, a2) {
		t.Fatalf("re-sent answer %+v, want %+v", a2, a1)
	}
	ev := msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "once", nil, 60, false)
	d.send(ev)
	d.send(ev)
	d.send(msg.NewPing(d.next()))
	d.expect(msg.KindEmptyAck)
	recv(t, ts.rec.events, "event")
	select {
	case e := <-ts.rec.events:
		t.Fatalf("duplicate delivered: %+v", e.e)
	default:
	}
	if n := ts.srv.Stats().Duplicates; n != 2 {
		t.Errorf("Duplicates %d, want 2", n)
	}
}

// TestPhoton08Acks: a Photon ≥ 0.8 ACKs Signal and a server ping with its
// own next message id (§4.2); the server accepts it and expects the id
// after it next. A piggybacked ACK with any other foreign id ends the
// session (Protocol).
func TestPhoton08Acks(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)
	e := asyncErr(func() error { return s.Signal(ctx, true) })
	m := d.expect(msg.KindSignal)
	d.send(msg.NewAck(d.next(), m.Token, msg.Changed, nil))
	if r := recv(t, e, "signal"); r.err != nil {
		t.Fatal(r.err)
	}
	e = asyncErr(func() error { return s.Ping(ctx) })
	d.expect(msg.KindPing)
	d.send(msg.NewEmptyAck(d.next()))
	if r := recv(t, e, "ping"); r.err != nil {
		t.Fatal(r.err)
	}
	d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "after", nil, 60, false))
	if ev := recv(t, ts.rec.events, "event"); ev.e.Name != "after" {
		t.Fatalf("event %+v", ev.e)
	}

	e = asyncErr(func() error { return s.Signal(ctx, false) })
	m = d.expect(msg.KindSignal)
	d.send(msg.NewAck(d.id+5, m.Token, msg.Changed, nil))
	if r := recv(t, e, "signal"); !errors.Is(r.err, ErrClosed) {
		t.Fatalf("Signal = %v, want ErrClosed", r.err)
	}
	if r := ts.sessionEnd(t, s); r != Protocol {
		t.Fatalf("reason %v, want protocol", r)
	}
}

// TestUnknownRequest: an unknown request gets an empty ACK when CON and
// nothing when NON (never 4.xx, §5); the session stays.
func TestUnknownRequest(t *testing.T) {
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	d.start(ts, heaterJSON)
	d.send(msg.Message{Type: msg.NonConfirmable, Code: msg.POST, ID: d.next(), Path: []string{"z"}})
	d.send(msg.Message{Type: msg.Confirmable, Code: msg.POST, ID: d.next(), Path: []string{"z"}, Payload: []byte("?")})
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("ack %+v", a)
	}
	d.send(msg.Message{Type: msg.Confirmable, Code: msg.POST, ID: d.next(), Path: []string{"x"}}) // Goodbye
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("goodbye ack %+v", a)
	}
	if n := ts.srv.Stats().UnknownRequests; n != 2 {
		t.Errorf("UnknownRequests %d, want 2", n)
	}
}

// TestIdle: a device that stops sending is closed after IdleTimeout; the
// server pings it after PingInterval of silence first.
func TestIdle(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.IdleTimeout = 300 * time.Millisecond
		c.PingInterval = 100 * time.Millisecond
	})
	d := dialDevice(t, ts, testID(1), handshake.Core)
	s := d.start(ts, heaterJSON)
	m := d.expect(msg.KindPing) // the server pings after silence
	d.send(msg.NewEmptyAck(m.ID))
	// The ACK refreshed the idle timer: the session lives on until the
	// device stays silent for IdleTimeout (it answers no more pings).
	if r := ts.sessionEnd(t, s); r != Idle {
		t.Fatalf("reason %v, want idle", r)
	}
	d.expectClosed()
}

// TestReplace: a device connecting again replaces its session; the handler
// sees the old end (Replaced) before the new start.
func TestReplace(t *testing.T) {
	ts := startServer(t, nil)
	d1 := dialDevice(t, ts, testID(1), handshake.Photon)
	s1 := d1.start(ts, heaterJSON)
	if got := recv(t, ts.rec.started, "start"); got != s1 {
		t.Fatal("first start")
	}
	d2 := dialDevice(t, ts, testID(1), handshake.Photon)
	d2.hello()
	end := recv(t, ts.rec.ended, "end")
	var se *SessionError
	if end.s != s1 || !errors.As(end.err, &se) || se.Reason != Replaced {
		t.Fatalf("end %v, want the first session replaced", end.err)
	}
	s2 := recv(t, ts.rec.started, "second start")
	if s2 == s1 || ts.srv.Session(testID(1)) != s2 {
		t.Fatal("registry does not hold the new session")
	}
	d1.expectClosed()
	d2.answerDescribe(heaterJSON)
	d2.send(msg.NewPing(d2.next()))
	d2.expect(msg.KindEmptyAck)
	if n := len(ts.srv.Sessions()); n != 1 {
		t.Errorf("%d sessions", n)
	}
}

// TestClose: Close ends the session (reason Closed); requests then fail
// with ErrClosed.
func TestClose(t *testing.T) {
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Core)
	s := d.start(ts, heaterJSON)
	if s.Err() != nil {
		t.Fatal("Err before the end")
	}
	s.Close()
	if r := ts.sessionEnd(t, s); r != Closed {
		t.Fatalf("reason %v", r)
	}
	d.expectClosed()
	_, err := s.Call(context.Background(), "heater", "on")
	var se *SessionError
	if !errors.Is(err, ErrClosed) || !errors.As(err, &se) || se.Reason != Closed {
		t.Fatalf("Call after Close = %v", err)
	}
	if ts.srv.Session(testID(1)) != nil {
		t.Fatal("closed session still registered")
	}
	s.Close() // idempotent
}

// TestShutdown: Serve returns only after every session has ended
// (Shutdown) and every SessionEnded has been delivered.
func TestShutdown(t *testing.T) {
	ts := startServer(t, nil)
	var ss []*Session
	for i := range 3 {
		d := dialDevice(t, ts, testID(i), handshake.Photon)
		ss = append(ss, d.start(ts, heaterJSON))
	}
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	if len(ts.rec.ended) != 3 {
		t.Fatalf("%d ends delivered when Serve returned, want 3", len(ts.rec.ended))
	}
	for _, s := range ss {
		if r := ts.sessionEnd(t, s); r != Shutdown {
			t.Errorf("reason %v, want shutdown", r)
		}
	}
	st := ts.srv.Stats()
	if st.Sessions != 0 || st.Connections != 0 || st.SessionsEnded["shutdown"] != 3 {
		t.Errorf("stats %+v", st)
	}
}

// blockingHandler blocks in Event until release is closed.
type blockingHandler struct {
	*recorder
	release chan struct{}
}

func (h blockingHandler) Event(s *Session, e msg.Event) {
	<-h.release
	h.recorder.Event(s, e)
}

// TestSlowHandler: a handler that blocks stalls nothing: the session keeps
// answering, events past HandlerQueue are dropped (oldest first) and
// counted, and order is kept.
func TestSlowHandler(t *testing.T) {
	h := blockingHandler{newRecorder(), make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(h.release) }) }
	ts := startServer(t, func(c *Config) {
		c.Handler = h
		c.HandlerQueue = 4
	})
	ts.rec = h.recorder
	t.Cleanup(release) // before the server's cleanup, which waits for the handler
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	d.start(ts, heaterJSON)
	for i := range 20 {
		d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), fmt.Sprintf("e%02d", i), nil, 60, false))
	}
	d.send(msg.NewPing(d.next()))
	d.expect(msg.KindEmptyAck) // the session is not stalled
	waitFor(t, waitLong, "drops", func() bool { return ts.srv.Stats().EventsDropped >= 15 })
	dropped := int(ts.srv.Stats().EventsDropped)
	release()
	var names []string
	for range 20 - dropped {
		names = append(names, recv(t, h.events, "event").e.Name)
	}
	// The first event may be in the handler already (not dropped); the
	// queue keeps the newest four, in order.
	if want := []string{"e16", "e17", "e18", "e19"}; !slices.Equal(names[len(names)-4:], want) || !slices.IsSorted(names) {
		t.Fatalf("delivered %q, want ... %q", names, want)
	}
}

// TestSlowPeer: a device that stops reading is closed when a write passes
// WriteTimeout (net.Pipe: no buffering).
func TestSlowPeer(t *testing.T) {
	ts := startServerOn(t, newPipeListener(), func(c *Config) { c.WriteTimeout = 100 * time.Millisecond }, testHooks{}, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)
	// The device reads nothing more; the server's next write blocks.
	go s.Ping(context.Background())
	if r := ts.sessionEnd(t, s); r != SlowPeer {
		t.Fatalf("reason %v, want slow_peer", r)
	}
}

// TestEarlyData: what the device sends right behind its Hello, before it
// read the server Hello, is processed after the session started.
func TestEarlyData(t *testing.T) {
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	h := msg.Hello{ProductID: 6, PlatformID: 6, HasPlatform: true}
	hello, _ := msg.NewHello(d.next(), nil, h.Marshal()).Encode()
	ev, _ := msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "early", nil, 60, false).Encode()
	d.sendPlain(hello)
	d.sendPlain(ev)
	d.expect(msg.KindHello)
	s := recv(t, ts.rec.started, "start")
	if e := recv(t, ts.rec.events, "event"); e.s != s || e.e.Name != "early" {
		t.Fatalf("event %+v", e)
	}
	// An application event triggers the application Describe.
	d.answerDescribe(`{"f":[],"v":{}}`)
	d.answerDescribe(heaterJSON)
}

// TestMiscDeviceMessages: the Photon keep-alive byte is ignored, a reset
// fails the request it answers, a refused Subscribe (the firehose) gets an
// empty ACK and is not recorded, a second Hello is answered like any
// unknown request.
func TestMiscDeviceMessages(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)

	d.sendPlain([]byte{0}) // keep-alive: not CoAP, no answer, no counter
	g := async(func() (msg.Value, error) { return s.Get(ctx, "state") })
	m := d.expect(msg.KindVariableRequest)
	d.send(msg.Message{Type: msg.Reset, Code: msg.Empty, ID: m.ID})
	if r := recv(t, g, "get"); !errors.Is(r.err, ErrReset) {
		t.Fatalf("Get answered by RST = %v, want ErrReset", r.err)
	}

	d.send(msg.Message{Type: msg.Confirmable, Code: msg.GET, ID: d.next(), Path: []string{"e"}}) // firehose
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("ack %+v", a)
	}
	if subs := s.Subscriptions(); len(subs) != 1 || ts.srv.Stats().RefusedSubscriptions != 1 {
		t.Fatalf("subscriptions %+v", subs)
	}
	d.subscribe("app/") // again: recorded once
	if len(s.Subscriptions()) != 1 {
		t.Fatal("duplicate subscription recorded")
	}

	d.send(msg.NewHello(d.next(), nil, make([]byte, 8)))
	d.send(msg.NewPing(d.next()))
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("got %+v, want the ping ack", a)
	}
	if s.Err() != nil {
		t.Fatal(s.Err())
	}
}

// TestHugeDescribe: a Describe answer cannot be larger than the frames a
// device may send (1024 bytes of ciphertext for a Photon, whose buffer is
// 800); a larger frame ends the session (TooLarge) before any JSON parsing.
// JSON that fits but does not parse keeps the session (TestDescribeBad).
func TestHugeDescribe(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)
	c := async(func() (int32, error) { return s.Call(ctx, "missing", "") })
	m := d.expect(msg.KindDescribe)
	huge := `{"f":["` + strings.Repeat("x", 1100) + `"],"v":{}}`
	d.send(msg.NewAck(m.ID, m.Token, msg.Content, []byte(huge)))
	if r := recv(t, c, "call"); !errors.Is(r.err, ErrClosed) {
		t.Fatalf("Call = %v, want ErrClosed", r.err)
	}
	if r := ts.sessionEnd(t, s); r != TooLarge {
		t.Fatalf("reason %v", r)
	}
}

// TestCallBeforeApplication: a call made before the application Describe
// waits for it instead of failing on the empty first answer (§2.4).
func TestCallBeforeApplication(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, nil)
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	d.hello()
	s := recv(t, ts.rec.started, "start")
	c := async(func() (int32, error) { return s.Call(ctx, "heater", "on") })
	d.answerDescribe(`{"f":[],"v":{}}`) // the answer taken at once
	d.subscribe("heater/")              // the application runs
	d.answerDescribe(heaterJSON)
	m := d.expect(msg.KindFunctionCall) // no third Describe
	d.send(msg.NewAck(m.ID, m.Token, msg.Changed, msg.EncodeReturn(1)))
	if r := recv(t, c, "call"); r.err != nil || r.v != 1 {
		t.Fatalf("Call = %d, %v", r.v, r.err)
	}
}

// subRecorder is a recorder that is also a SubscribeHandler.
type subRecorder struct {
	*recorder
	mu   sync.Mutex
	subs []msg.Subscription
	seen []bool // whether Session.Subscribed already reported each one
}

func (r *subRecorder) Subscribed(s *Session, sub msg.Subscription) {
	seen := s.Subscribed(sub.Prefix)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs = append(r.subs, sub)
	r.seen = append(r.seen, seen)
}

// TestSubscribeHandler: a SubscribeHandler learns of each subscription
// once, before Session.Subscribed reports it, and never of a refused one.
func TestSubscribeHandler(t *testing.T) {
	sr := &subRecorder{}
	ts := startServer(t, func(c *Config) { sr.recorder = c.Handler.(*recorder); c.Handler = sr })
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON) // subscribed to "app/"
	d.subscribe("heater/")
	// A repeat is not recorded again, the firehose is refused.
	d.subscribe("heater/")
	d.send(msg.Message{Type: msg.Confirmable, Code: msg.GET, ID: d.next(), Path: []string{"e"}})
	if a := d.expect(msg.KindEmptyAck); a.ID != d.id {
		t.Fatalf("ack %+v", a)
	}
	sr.mu.Lock()
	defer sr.mu.Unlock()
	want := []msg.Subscription{{Prefix: "app/"}, {Prefix: "heater/"}}
	if diff := cmp.Diff(want, sr.subs); diff != "" {
		t.Errorf("reported subscriptions (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, s.Subscriptions()); diff != "" {
		t.Errorf("session subscriptions (-want +got):\n%s", diff)
	}
	for i, seen := range sr.seen {
		if seen {
			t.Errorf("subscription %d: Session.Subscribed reported it before the handler heard of it", i)
		}
	}
}

// quickRecorder is a recorder that is a QuickEventHandler, and checks that
// its calls for a session never overlap.
type quickRecorder struct {
	*recorder
	busy    atomic.Int32
	overlap atomic.Int32
}

func (q *quickRecorder) QuickEvents() {}

func (q *quickRecorder) enter() func() {
	if q.busy.Add(1) != 1 {
		q.overlap.Add(1)
	}
	return func() { q.busy.Add(-1) }
}

func (q *quickRecorder) SessionStarted(s *Session) { defer q.enter()(); q.recorder.SessionStarted(s) }
func (q *quickRecorder) Event(s *Session, e msg.Event) {
	defer q.enter()()
	q.recorder.Event(s, e)
}
func (q *quickRecorder) SessionEnded(s *Session, err error) {
	defer q.enter()()
	q.recorder.SessionEnded(s, err)
}

// TestQuickEventHandler: with a QuickEventHandler, events the read loop
// hands over itself still come after SessionStarted, in order, one call at
// a time, and before SessionEnded.
func TestQuickEventHandler(t *testing.T) {
	var q *quickRecorder
	ts := startServer(t, func(c *Config) {
		q = &quickRecorder{recorder: c.Handler.(*recorder)}
		c.Handler = q
	})
	d := dialDevice(t, ts, testID(1), handshake.Photon)
	s := d.start(ts, heaterJSON)
	const n = 300
	for i := range n {
		d.send(msg.NewEventFromDevice(msg.NonConfirmable, d.next(), "e", []byte(strconv.Itoa(i)), 60, false))
	}
	for i := range n {
		got := recv(t, ts.rec.events, "event")
		if got.s != s || string(got.e.Data) != strconv.Itoa(i) {
			t.Fatalf("event %d: got %q from %p, want %d from %p", i, got.e.Data, got.s, i, s)
		}
	}
	s.Close()
	if e := recv(t, ts.rec.ended, "session end"); e.s != s {
		t.Fatal("end of another session")
	}
	if n := q.overlap.Load(); n != 0 {
		t.Errorf("%d overlapping handler calls", n)
	}
}
