package devsim

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

var testID = keys.DeviceID{0x53, 0xff, 0x6b, 0x06, 0x50, 0x67, 0x54, 0x48, 0x53, 0x36, 0x01, 0x87}

// heaterFns is a small application used by the unit tests.
func heaterApp() ([]Function, []Variable) {
	var mu sync.Mutex
	on := false
	fns := []Function{{Name: "heater", Call: func(_ context.Context, arg string) int32 {
		mu.Lock()
		defer mu.Unlock()
		switch arg {
		case "on":
			on = true
			return 1
		case "off":
			on = false
			return 0
		}
		return -1
	}}}
	vars := []Variable{
		{Name: "temp", Type: msg.VarDouble, Get: func() msg.Value { return msg.Value{Double: 48.5} }},
		{Name: "state", Type: msg.VarInt, Get: func() msg.Value {
			mu.Lock()
			defer mu.Unlock()
			if on {
				return msg.Value{Int: 1}
			}
			return msg.Value{Int: 0}
		}},
		{Name: "ok", Type: msg.VarBool, Get: func() msg.Value { return msg.Value{Bool: true} }},
		{Name: "name", Type: msg.VarString, Get: func() msg.Value { return msg.Value{String: "boiler"} }},
	}
	return fns, vars
}

func TestHello(t *testing.T) {
	tests := []struct {
		fw      Firmware
		payload []byte
		le      bool
	}{
		{Core, []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, false},
		{Photon07, []byte{0, 6, 0xff, 0xff, 0, 0, 0, 6}, false},
		{Photon08, []byte{0, 6, 0xff, 0xff, 0, 2, 0, 6}, true},
	}
	for _, tc := range tests {
		t.Run(tc.fw.String(), func(t *testing.T) {
			p, d, hello, _ := newPeer(t, Config{Firmware: tc.fw, DeviceID: testID})
			if hello.Type != msg.NonConfirmable || len(hello.Token) != 0 {
				t.Errorf("hello: got type %v token %x, want NON without token", hello.Type, hello.Token)
			}
			if !bytes.Equal(hello.Payload, tc.payload) {
				t.Errorf("hello payload: got %x, want %x", hello.Payload, tc.payload)
			}
			// spark-protocol.md §2.3: the Hello uses the salt counter + 1.
			want := binary.BigEndian.Uint16(p.sess.Salt[:2]) + 1
			if tc.le {
				want = binary.LittleEndian.Uint16(p.sess.Salt[:2]) + 1
			}
			if hello.ID != want {
				t.Errorf("hello id: got %#04x, want %#04x", hello.ID, want)
			}
			if tc.fw == Core {
				// The Core waits for nothing.
				if err := d.WaitConnected(ctxT(t)); err != nil {
					t.Fatal(err)
				}
				return
			}
			select {
			case <-d.Connected():
				t.Fatal("a Photon is connected before the server Hello")
			default:
			}
			p.connect(d)
		})
	}
}

func TestNoServerHello(t *testing.T) {
	for _, fw := range []Firmware{Photon07, Photon08} {
		t.Run(fw.String(), func(t *testing.T) {
			_, _, _, rn := newPeer(t, Config{Firmware: fw, DeviceID: testID, HelloTimeout: 50 * time.Millisecond})
			if err := rn.wait(t); !errors.Is(err, ErrNoServerHello) {
				t.Fatalf("Run: got %v, want ErrNoServerHello", err)
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	fns, vars := heaterApp()
	tests := []struct {
		name  string
		fw    Firmware
		flags byte
		want  string
	}{
		{"core", Core, 0, `{"f":["heater"],"v":{"temp":9,"state":2,"ok":1,"name":4}}`},
		{"core ignores flags", Core, 1, `{"f":["heater"],"v":{"temp":9,"state":2,"ok":1,"name":4}}`},
		{"photon07", Photon07, 0, `{"f":["heater"],"v":{"temp":9,"state":2,"ok":1,"name":4},"p":6,"m":[]}`},
		{"photon08", Photon08, 0, `{"f":["heater"],"v":{"temp":9,"state":2,"ok":1,"name":4},"p":6,"m":[]}`},
		{"photon system only", Photon08, 1, `{"p":6,"m":[]}`},
		{"photon application only", Photon07, 2, `{"f":["heater"],"v":{"temp":9,"state":2,"ok":1,"name":4}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, d, _, _ := newPeer(t, Config{Firmware: tc.fw, DeviceID: testID, Functions: fns, Variables: vars})
			p.connect(d)
			id, tok := p.nextID(), p.nextTok()
			p.write(msg.NewDescribe(id, tok, tc.flags))
			m := p.read()
			if m.Type != msg.Acknowledgement || m.Code != msg.Content || m.ID != id || !bytes.Equal(m.Token, []byte{tok}) {
				t.Fatalf("got %v %v id %#04x token %x, want ACK 2.05 id %#04x token %02x", m.Type, m.Code, m.ID, m.Token, id, tok)
			}
			if string(m.Payload) != tc.want {
				t.Errorf("got %s, want %s", m.Payload, tc.want)
			}
			if _, err := msg.ParseDescription(m.Payload); err != nil {
				t.Errorf("ParseDescription: %v", err)
			}
		})
	}
}

// TestDescribeAtOnceEmpty: the first Describe is answered before the
// application starts (empty lists), then the application's Subscribe goes
// out and a second Describe has everything (spark-protocol.md §2.4).
func TestDescribeAtOnceEmpty(t *testing.T) {
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			fns, vars := heaterApp()
			p, d, _, _ := newPeer(t, Config{
				Firmware: fw, DeviceID: testID, Functions: fns, Variables: vars,
				Subscriptions:       []msg.Subscription{{Prefix: "heater/"}},
				DescribeAtOnceEmpty: true,
			})
			p.connect(d)
			p.write(msg.NewDescribe(p.nextID(), p.nextTok(), 0))
			first := p.read()
			d1, err := msg.ParseDescription(first.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if len(d1.Functions) != 0 || len(d1.Variables) != 0 {
				t.Errorf("first describe: got %s, want empty lists", first.Payload)
			}
			sub := p.read()
			if s, err := msg.ParseSubscribe(sub); err != nil || s.Prefix != "heater/" {
				t.Fatalf("after the first describe: got %+v (%v), want Subscribe heater/", sub, err)
			}
			p.write(msg.NewEmptyAck(sub.ID))
			p.write(msg.NewDescribe(p.nextID(), p.nextTok(), 0))
			d2, err := msg.ParseDescription(p.read().Payload)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"heater"}, d2.Functions); diff != "" {
				t.Errorf("second describe functions (-want +got):\n%s", diff)
			}
			if len(d2.Variables) != 4 {
				t.Errorf("second describe variables: got %v, want 4", d2.Variables)
			}
		})
	}
}

// TestAppStartDelay: before the application starts the device has no
// functions; AppStartDelay later it has.
func TestAppStartDelay(t *testing.T) {
	fns, vars := heaterApp()
	p, d, _, _ := newPeer(t, Config{
		Firmware: Photon08, DeviceID: testID, Functions: fns, Variables: vars,
		Subscriptions: []msg.Subscription{{Prefix: "x"}},
		AppStartDelay: 30 * time.Millisecond,
	})
	p.connect(d)
	p.write(msg.NewFunctionCall(p.nextID(), p.nextTok(), "heater", []byte("on")))
	p.read() // empty ACK
	if r, _ := msg.DecodeReturn(p.read().Payload); r != -1 {
		t.Errorf("call before the application started: got %d, want -1", r)
	}
	if k := p.read().Kind(); k != msg.KindSubscribe { // the application started
		t.Fatalf("got %v, want the application's Subscribe", k)
	}
	p.write(msg.NewFunctionCall(p.nextID(), p.nextTok(), "heater", []byte("on")))
	p.read()
	if r, _ := msg.DecodeReturn(p.read().Payload); r != 1 {
		t.Errorf("call after the application started: got %d, want 1", r)
	}
}

func TestFunctionCall(t *testing.T) {
	long := bytes.Repeat([]byte("y"), 64)
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			fns, vars := heaterApp()
			p, d, hello, rn := newPeer(t, Config{Firmware: fw, DeviceID: testID, Functions: fns, Variables: vars})
			p.connect(d)
			next := hello.ID
			call := func(name string, arg []byte, wantAck msg.Code, want int32) {
				t.Helper()
				id, tok := p.nextID(), p.nextTok()
				p.write(msg.NewFunctionCall(id, tok, name, arg))
				ack := p.read()
				if ack.Type != msg.Acknowledgement || ack.Code != wantAck || ack.ID != id {
					t.Fatalf("%s(%q): got %v %v id %#04x, want ACK %v id %#04x", name, arg, ack.Type, ack.Code, ack.ID, wantAck, id)
				}
				if wantAck == msg.Empty && len(ack.Token) != 0 {
					t.Errorf("empty ACK with token %x", ack.Token)
				}
				ret := p.read()
				next++
				if ret.Type != msg.NonConfirmable || ret.Code != msg.Changed || ret.ID != next || !bytes.Equal(ret.Token, []byte{tok}) {
					t.Fatalf("%s(%q) result: got %v %v id %#04x token %x, want NON 2.04 id %#04x token %02x",
						name, arg, ret.Type, ret.Code, ret.ID, ret.Token, next, tok)
				}
				r, err := msg.DecodeReturn(ret.Payload)
				if err != nil || r != want {
					t.Errorf("%s(%q): got %d (%v), want %d", name, arg, r, err, want)
				}
			}
			call("heater", []byte("on"), msg.Empty, 1)
			call("heater", []byte("off"), msg.Empty, 0)
			call("heater", nil, msg.Empty, -1)
			call("heater", []byte("bogus"), msg.Empty, -1)
			call("nosuch", []byte("on"), msg.Empty, -1)
			call("heater", bytes.Repeat([]byte("x"), 63), msg.Empty, -1)
			call("heater", []byte("on"), msg.Empty, 1)
			if fw == Core {
				// A 64-byte argument makes the Core drop the connection.
				p.write(msg.NewFunctionCall(p.nextID(), p.nextTok(), "heater", long))
				if err := rn.wait(t); !errors.Is(err, ErrArgTooLong) {
					t.Fatalf("Run: got %v, want ErrArgTooLong", err)
				}
				return
			}
			// A Photon ACKs 4.00 and runs the function with the previous
			// argument ("on" → 1).
			call("heater", []byte("off"), msg.Empty, 0)
			call("heater", long, msg.BadRequest, 0)
			call("heater", []byte("on"), msg.Empty, 1)
			call("heater", long, msg.BadRequest, 1)
			if got := d.Stats().Calls; got != 11 {
				t.Errorf("Stats.Calls: got %d, want 11", got)
			}
		})
	}
}

// TestFunctionNameTruncated: names are cut to 12 bytes on both sides.
func TestFunctionNameTruncated(t *testing.T) {
	fn := Function{Name: "averyverylongname", Call: func(context.Context, string) int32 { return 7 }}
	p, d, _, _ := newPeer(t, Config{Firmware: Core, DeviceID: testID, Functions: []Function{fn}})
	p.connect(d)
	p.write(msg.NewDescribe(p.nextID(), p.nextTok(), 0))
	if got, want := string(p.read().Payload), `{"f":["averyverylon"],"v":{}}`; got != want {
		t.Errorf("describe: got %s, want %s", got, want)
	}
	p.write(msg.NewFunctionCall(p.nextID(), p.nextTok(), "averyverylongname", nil))
	p.read()
	if r, _ := msg.DecodeReturn(p.read().Payload); r != 7 {
		t.Errorf("got %d, want 7", r)
	}
}

func TestVariable(t *testing.T) {
	double := make([]byte, 8)
	binary.LittleEndian.PutUint64(double, math.Float64bits(48.5))
	tests := []struct {
		name string
		code msg.Code
		want []byte
	}{
		{"temp", msg.Content, double},
		{"state", msg.Content, []byte{0, 0, 0, 0}},
		{"ok", msg.Content, []byte{1}},
		{"name", msg.Content, []byte("boiler")},
		{"nosuch", msg.NotFound, nil},
	}
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			fns, vars := heaterApp()
			p, d, _, _ := newPeer(t, Config{Firmware: fw, DeviceID: testID, Functions: fns, Variables: vars})
			p.connect(d)
			for _, tc := range tests {
				id, tok := p.nextID(), p.nextTok()
				p.write(msg.NewVariableRequest(id, tok, tc.name))
				m := p.read()
				if m.Type != msg.Acknowledgement || m.Code != tc.code || m.ID != id || !bytes.Equal(m.Token, []byte{tok}) {
					t.Fatalf("%s: got %v %v id %#04x token %x, want ACK %v id %#04x token %02x", tc.name, m.Type, m.Code, m.ID, m.Token, tc.code, id, tok)
				}
				if !bytes.Equal(m.Payload, tc.want) {
					t.Errorf("%s: got %x, want %x", tc.name, m.Payload, tc.want)
				}
			}
			if got := d.Stats().Gets; got != len(tests) {
				t.Errorf("Stats.Gets: got %d, want %d", got, len(tests))
			}
		})
	}
}

// TestEmptyStringVariable: the firmware writes the payload marker even
// with no payload (Messages::content), which strict CoAP decoders refuse.
func TestEmptyStringVariable(t *testing.T) {
	v := Variable{Name: "s", Type: msg.VarString, Get: func() msg.Value { return msg.Value{} }}
	p, d, _, _ := newPeer(t, Config{Firmware: Photon08, DeviceID: testID, Variables: []Variable{v}})
	p.connect(d)
	id, tok := p.nextID(), p.nextTok()
	p.write(msg.NewVariableRequest(id, tok, "s"))
	if got, want := p.readRaw(), []byte{0x61, 0x45, byte(id >> 8), byte(id), tok, 0xff}; !bytes.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
}

func TestEventsToDevice(t *testing.T) {
	var mu sync.Mutex
	var got []msg.Event
	p, d, _, _ := newPeer(t, Config{
		Firmware: Photon08, DeviceID: testID,
		Subscriptions: []msg.Subscription{{Prefix: "heater/"}},
		OnEvent: func(e msg.Event) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, e)
		},
	})
	p.connect(d)
	if s := p.read(); s.Kind() != msg.KindSubscribe {
		t.Fatalf("got %v, want Subscribe", s.Kind())
	}
	p.write(msg.NewEventToDevice(p.nextID(), "other/x", []byte("no"), 60, false))
	p.write(msg.NewEventToDevice(p.nextID(), "heater/cmd", []byte("on"), 60, false))
	p.write(msg.NewEventToDevice(p.nextID(), "heater/x/y", nil, 120, true))
	// A ping round trip: the device has handled the events above before
	// the new subscription could match "other/x".
	p.write(msg.NewPing(p.nextID()))
	p.read()
	// A dynamic subscription.
	if err := d.Subscribe(ctxT(t), msg.Subscription{Prefix: "other"}); err != nil {
		t.Fatal(err)
	}
	if s := p.read(); s.Kind() != msg.KindSubscribe {
		t.Fatalf("got %v, want Subscribe", s.Kind())
	}
	p.write(msg.NewEventToDevice(p.nextID(), "other/y", []byte("yes"), 60, false))
	// A ping round trip orders the check after the events' handling.
	id := p.nextID()
	p.write(msg.NewPing(id))
	p.read()
	mu.Lock()
	defer mu.Unlock()
	want := []msg.Event{
		{Name: "heater/cmd", Data: []byte("on"), TTL: 60},
		{Name: "heater/x/y", TTL: 120, Private: true},
		{Name: "other/y", Data: []byte("yes"), TTL: 60},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b []byte) bool { return bytes.Equal(a, b) })); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestSignalAndServerPing checks the ACK ids: the request's on the Core and
// 0.7, a new device id on 0.8 (which the next device message continues).
func TestSignalAndServerPing(t *testing.T) {
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			var mu sync.Mutex
			var signals []bool
			p, d, hello, _ := newPeer(t, Config{Firmware: fw, DeviceID: testID, OnSignal: func(on bool) {
				mu.Lock()
				defer mu.Unlock()
				signals = append(signals, on)
			}})
			p.connect(d)
			next := hello.ID
			ackID := func(req uint16) uint16 {
				if fw == Photon08 {
					next++
					return next
				}
				return req
			}
			for _, on := range []bool{true, false} {
				id, tok := p.nextID(), p.nextTok()
				p.write(msg.NewSignal(id, tok, on))
				m := p.read()
				if want := ackID(id); m.Type != msg.Acknowledgement || m.Code != msg.Changed || m.ID != want || !bytes.Equal(m.Token, []byte{tok}) {
					t.Fatalf("signal %v: got %v %v id %#04x token %x, want ACK 2.04 id %#04x token %02x", on, m.Type, m.Code, m.ID, m.Token, want, tok)
				}
			}
			id := p.nextID()
			p.write(msg.NewPing(id))
			m := p.read()
			if want := ackID(id); m.Type != msg.Acknowledgement || m.Code != msg.Empty || m.ID != want || len(m.Token) != 0 {
				t.Fatalf("ping: got %v %v id %#04x token %x, want empty ACK id %#04x", m.Type, m.Code, m.ID, m.Token, want)
			}
			if err := d.Publish(ctxT(t), "after", nil, 60, false); err != nil {
				t.Fatal(err)
			}
			if m := p.read(); m.ID != next+1 {
				t.Errorf("next device message: got id %#04x, want %#04x", m.ID, next+1)
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff([]bool{true, false}, signals); diff != "" {
				t.Errorf("signals (-want +got):\n%s", diff)
			}
			if st := d.Stats(); st.Signals != 2 || st.PingsIn != 1 {
				t.Errorf("Stats: got %+v, want 2 signals and 1 ping in", st)
			}
		})
	}
}

func TestPublish(t *testing.T) {
	tests := []struct {
		name    string
		fw      Firmware
		ev      string
		data    []byte
		ttl     uint32
		private bool
		want    func(id uint16) []byte
	}{
		{"ttl 60 omits Max-Age", Photon08, "temperature", []byte("48.5"), 60, false, func(id uint16) []byte {
			return append([]byte{0x50, 0x02, byte(id >> 8), byte(id), 0xb1, 'e', 0x0b}, "temperature\xff48.5"...)
		}},
		{"private with 3-byte Max-Age", Core, "a/b", []byte("x"), 21600, true, func(id uint16) []byte {
			return append([]byte{0x50, 0x02, byte(id >> 8), byte(id), 0xb1, 'E', 0x03}, "a/b\x33\x00\x54\x60\xffx"...)
		}},
		{"nil data: no payload", Photon07, "ping", nil, 60, false, func(id uint16) []byte {
			return append([]byte{0x50, 0x02, byte(id >> 8), byte(id), 0xb1, 'e', 0x04}, "ping"...)
		}},
		{"empty data: bare marker", Photon07, "ping", []byte{}, 60, false, func(id uint16) []byte {
			return append([]byte{0x50, 0x02, byte(id >> 8), byte(id), 0xb1, 'e', 0x04}, "ping\xff"...)
		}},
		{"core data cut to 63", Core, "d", bytes.Repeat([]byte("z"), 70), 60, false, func(id uint16) []byte {
			return append([]byte{0x50, 0x02, byte(id >> 8), byte(id), 0xb1, 'e', 0x01, 'd', 0xff}, bytes.Repeat([]byte("z"), 63)...)
		}},
		{"name cut to 63", Photon08, string(bytes.Repeat([]byte("n"), 70)), []byte("1"), 60, false, func(id uint16) []byte {
			b := []byte{0x50, 0x02, byte(id >> 8), byte(id), 0xb1, 'e', 0x0d, 63 - 13}
			return append(append(b, bytes.Repeat([]byte("n"), 63)...), 0xff, '1')
		}},
	}
	for _, tc := range tests {
		// Emit sends the same bytes as Publish; it only returns earlier.
		for _, method := range []string{"Publish", "Emit"} {
			t.Run(tc.name+"/"+method, func(t *testing.T) {
				p, d, hello, _ := newPeer(t, Config{Firmware: tc.fw, DeviceID: testID})
				p.connect(d)
				send := d.Publish
				if method == "Emit" {
					send = d.Emit
				}
				if err := send(ctxT(t), tc.ev, tc.data, tc.ttl, tc.private); err != nil {
					t.Fatal(err)
				}
				if got, want := p.readRaw(), tc.want(hello.ID+1); !bytes.Equal(got, want) {
					t.Errorf("got %x, want %x", got, want)
				}
			})
		}
	}
}

func TestPublishRateLimit(t *testing.T) {
	for _, off := range []bool{false, true} {
		p, d, _, _ := newPeer(t, Config{Firmware: Core, DeviceID: testID, NoRateLimit: off})
		p.connect(d)
		ctx := ctxT(t)
		for i := range 4 {
			if err := d.Publish(ctx, "e", nil, 60, false); err != nil {
				t.Fatalf("event %d: %v", i+1, err)
			}
			p.read()
		}
		err := d.Publish(ctx, "e", nil, 60, false)
		if off {
			if err != nil {
				t.Fatalf("NoRateLimit: 5th event: %v", err)
			}
			continue
		}
		if !errors.Is(err, ErrRateLimited) {
			t.Fatalf("5th event: got %v, want ErrRateLimited", err)
		}
		if got := d.Stats().RateLimited; got != 1 {
			t.Errorf("Stats.RateLimited: got %d, want 1", got)
		}
	}
}

func TestNotConnected(t *testing.T) {
	d, err := New(Config{Firmware: Photon08, ServerKey: &serverKey(t).PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := d.Publish(ctx, "x", nil, 60, false); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Publish: got %v, want ErrNotConnected", err)
	}
	if _, err := d.SyncTime(ctx); !errors.Is(err, ErrNotConnected) {
		t.Errorf("SyncTime: got %v, want ErrNotConnected", err)
	}
	if err := d.Ping(ctx); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Ping: got %v, want ErrNotConnected", err)
	}
	if err := d.Subscribe(ctx, msg.Subscription{Prefix: "x"}); err != nil {
		t.Errorf("Subscribe without a connection records it: got %v", err)
	}
}

// TestErrorAck: a 0.7 Photon drops the connection on an error code in an
// ACK to its own message; the Core and 0.8 ignore it (spark-protocol.md §6).
func TestErrorAck(t *testing.T) {
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			p, d, _, rn := newPeer(t, Config{Firmware: fw, DeviceID: testID})
			p.connect(d)
			if err := d.Publish(ctxT(t), "x", []byte("1"), 60, false); err != nil {
				t.Fatal(err)
			}
			ev := p.read()
			p.write(msg.NewAck(ev.ID, nil, msg.BadRequest, nil))
			if fw == Photon07 {
				if err := rn.wait(t); !errors.Is(err, ErrErrorAck) {
					t.Fatalf("Run: got %v, want ErrErrorAck", err)
				}
				return
			}
			// Still connected: a server ping is answered.
			p.write(msg.NewPing(p.nextID()))
			if m := p.read(); m.Kind() != msg.KindEmptyAck {
				t.Fatalf("got %v, want the ping's empty ACK", m.Kind())
			}
		})
	}
}

func TestSyncTimeAndPing(t *testing.T) {
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			p, d, _, _ := newPeer(t, Config{Firmware: fw, DeviceID: testID})
			p.connect(d)
			res := make(chan error, 1)
			var got time.Time
			go func() {
				var err error
				got, err = d.SyncTime(ctxT(t))
				res <- err
			}()
			req := p.read()
			if req.Kind() != msg.KindGetTime || len(req.Token) != 1 {
				t.Fatalf("got %v token %x, want GetTime with a 1-byte token", req.Kind(), req.Token)
			}
			wantTok := byte(1) // 0.8 counts tokens from 1
			if fw != Photon08 {
				wantTok = p.sess.Salt[2] + 1
			}
			if req.Token[0] != wantTok {
				t.Errorf("token: got %02x, want %02x", req.Token[0], wantTok)
			}
			p.write(msg.NewTimeResponse(req.ID, req.Token, 1795626036))
			if err := <-res; err != nil {
				t.Fatal(err)
			}
			if want := time.Unix(1795626036, 0).UTC(); !got.Equal(want) {
				t.Errorf("time: got %v, want %v", got, want)
			}
			go func() { res <- d.Ping(ctxT(t)) }()
			ping := p.read()
			if ping.Kind() != msg.KindPing || ping.ID != req.ID+1 {
				t.Fatalf("got %v id %#04x, want Ping id %#04x", ping.Kind(), ping.ID, req.ID+1)
			}
			p.write(msg.NewEmptyAck(ping.ID))
			if err := <-res; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestKeepalive: the device pings after PingInterval without a message and
// drops the connection when nothing comes within PingTimeout.
func TestKeepalive(t *testing.T) {
	p, d, _, rn := newPeer(t, Config{
		Firmware: Photon08, DeviceID: testID,
		PingInterval: 20 * time.Millisecond, PingTimeout: 50 * time.Millisecond,
	})
	p.connect(d)
	ping := p.read()
	if ping.Kind() != msg.KindPing {
		t.Fatalf("got %v, want Ping", ping.Kind())
	}
	p.write(msg.NewEmptyAck(ping.ID))
	ping2 := p.read() // the next keepalive, one interval later
	if ping2.Kind() != msg.KindPing || ping2.ID != ping.ID+1 {
		t.Fatalf("got %v id %#04x, want Ping id %#04x", ping2.Kind(), ping2.ID, ping.ID+1)
	}
	// Unanswered: the device gives up.
	if err := rn.wait(t); !errors.Is(err, ErrPingTimeout) {
		t.Fatalf("Run: got %v, want ErrPingTimeout", err)
	}
	if got := d.Stats().PingsOut; got != 2 {
		t.Errorf("Stats.PingsOut: got %d, want 2", got)
	}
}

func TestPeerClosed(t *testing.T) {
	p, d, _, rn := newPeer(t, Config{Firmware: Photon07, DeviceID: testID})
	p.connect(d)
	_ = p.conn.Close()
	if err := rn.wait(t); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("Run: got %v, want ErrPeerClosed", err)
	}
	select {
	case <-d.Connected():
		t.Error("still connected after the connection ended")
	default:
	}
}

// TestUndecodable: a frame without valid CoAP makes the device drop the
// connection.
func TestUndecodable(t *testing.T) {
	p, d, _, rn := newPeer(t, Config{Firmware: Core, DeviceID: testID})
	p.connect(d)
	p.writeRaw([]byte{0xff, 0xff, 0xff})
	if err := rn.wait(t); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Run: got %v, want ErrProtocol", err)
	}
}

func TestRunTwice(t *testing.T) {
	p, d, _, _ := newPeer(t, Config{Firmware: Core, DeviceID: testID})
	p.connect(d)
	a, b := netPipe(t)
	if err := d.Run(ctxT(t), a); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run: got %v, want ErrRunning", err)
	}
	_ = b.Close()
}

func TestConfigErrors(t *testing.T) {
	pub := &serverKey(t).PublicKey
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no firmware", Config{ServerKey: pub}},
		{"no server key", Config{Firmware: Core}},
		{"function without Call", Config{Firmware: Core, ServerKey: pub, Functions: []Function{{Name: "f"}}}},
		{"variable without name", Config{Firmware: Core, ServerKey: pub, Variables: []Variable{{Get: func() msg.Value { return msg.Value{} }}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); !errors.Is(err, ErrConfig) {
				t.Errorf("got %v, want ErrConfig", err)
			}
		})
	}
}

func TestParseFirmware(t *testing.T) {
	for _, fw := range allFirmwares {
		got, err := ParseFirmware(fw.String())
		if err != nil || got != fw {
			t.Errorf("ParseFirmware(%q): got %v, %v", fw.String(), got, err)
		}
	}
	if _, err := ParseFirmware("electron"); !errors.Is(err, ErrConfig) {
		t.Errorf("ParseFirmware(electron): got %v, want ErrConfig", err)
	}
}

// TestFrameLimit: a Core drops the connection on a frame over 640 bytes
// (spark-protocol.md §3); a Photon takes up to 800.
func TestFrameLimit(t *testing.T) {
	for _, fw := range []Firmware{Core, Photon08} {
		t.Run(fw.String(), func(t *testing.T) {
			p, d, _, rn := newPeer(t, Config{Firmware: fw, DeviceID: testID})
			p.connect(d)
			p.write(msg.NewEventToDevice(p.nextID(), "big", bytes.Repeat([]byte("x"), 700), 60, false))
			if fw == Core {
				if err := rn.wait(t); !errors.Is(err, frame.ErrTooLarge) {
					t.Fatalf("Run: got %v, want frame.ErrTooLarge", err)
				}
				return
			}
			p.write(msg.NewPing(p.nextID()))
			if m := p.read(); m.Kind() != msg.KindEmptyAck {
				t.Fatalf("got %v, want the ping's empty ACK", m.Kind())
			}
		})
	}
}

// TestRunEndsWithContext: cancelling Run's context ends it with nil.
func TestRunEndsWithContext(t *testing.T) {
	p, d, _, rn := newPeer(t, Config{Firmware: Photon07, DeviceID: testID})
	p.connect(d)
	if err := rn.stop(); err != nil {
		t.Fatalf("Run: got %v, want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if err := d.WaitConnected(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitConnected after the end: got %v, want DeadlineExceeded", err)
	}
}

// TestSetFunctions: the next Describe and calls see the new sets.
func TestSetFunctions(t *testing.T) {
	fns, vars := heaterApp()
	p, d, _, _ := newPeer(t, Config{Firmware: Photon08, DeviceID: testID, Functions: fns, Variables: vars})
	p.connect(d)
	d.SetFunctions([]Function{{Name: "reset", Call: func(context.Context, string) int32 { return 42 }}})
	d.SetVariables([]Variable{{Name: "count", Type: msg.VarInt, Get: func() msg.Value { return msg.Value{Int: 3} }}})
	p.write(msg.NewDescribe(p.nextID(), p.nextTok(), 2))
	if got, want := string(p.read().Payload), `{"f":["reset"],"v":{"count":2}}`; got != want {
		t.Errorf("describe: got %s, want %s", got, want)
	}
	p.write(msg.NewFunctionCall(p.nextID(), p.nextTok(), "reset", nil))
	p.read()
	if r, _ := msg.DecodeReturn(p.read().Payload); r != 42 {
		t.Errorf("reset: got %d, want 42", r)
	}
	p.write(msg.NewVariableRequest(p.nextID(), p.nextTok(), "temp"))
	if m := p.read(); m.Code != msg.NotFound {
		t.Errorf("removed variable: got %v, want 4.04", m.Code)
	}
}

// TestHandshakeFailure: a server that cannot sign with the key the device
// was flashed with is refused.
func TestHandshakeFailure(t *testing.T) {
	other, err := GenerateKey() // any key that is not the server's
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Firmware: Photon08, DeviceID: testID, ServerKey: &serverKey(t).PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	srv, dev := netPipe(t)
	rn := run(t, d, dev)
	_ = srv.SetDeadline(time.Now().Add(testTimeout))
	_, err = handshake.Server(srv, handshake.ServerConfig{
		Key: serverKey(t),
		Lookup: func(keys.DeviceID, *rsa.PublicKey) (*rsa.PublicKey, error) {
			return &other.PublicKey, nil // the session key goes to the wrong device key
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rn.wait(t); !errors.Is(err, ErrHandshake) {
		t.Fatalf("Run: got %v, want ErrHandshake", err)
	}
}

func TestDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	d, err := New(Config{Firmware: Core, ServerKey: &serverKey(t).PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Dial(ctxT(t), addr); err == nil {
		t.Fatal("Dial to a closed port: got nil")
	}
}
