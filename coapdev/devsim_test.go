package coapdev

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

var firmwares = []devsim.Firmware{devsim.Core, devsim.Photon07, devsim.Photon08}

// simDevice runs a devsim heater against ts until the test ends. It
// returns the heater, the server's session and what the device received.
type simDevice struct {
	h       *devsim.Heater
	s       *Session
	events  chan msg.Event
	signals chan bool
	done    chan error // Dial's result
}

func startSim(t testing.TB, ts *testServer, fw devsim.Firmware, i int, edit func(*devsim.HeaterConfig)) *simDevice {
	t.Helper()
	key, err := devsim.SharedKey()
	if err != nil {
		t.Fatal(err)
	}
	sd := &simDevice{events: make(chan msg.Event, 64), signals: make(chan bool, 8), done: make(chan error, 1)}
	cfg := devsim.HeaterConfig{
		Interval: -1,
		Device: devsim.Config{
			Firmware:            fw,
			DeviceID:            testID(i),
			DeviceKey:           key,
			ServerKey:           &ts.tk.server.PublicKey,
			SystemMessages:      fw != devsim.Core,
			DescribeAtOnceEmpty: true,
			NoRateLimit:         true,
			Subscriptions:       []msg.Subscription{{Prefix: "heater/"}},
			Variables: []devsim.Variable{
				{Name: "flag", Type: msg.VarBool, Get: func() msg.Value { return msg.Value{Type: msg.VarBool, Bool: true} }},
				{Name: "label", Type: msg.VarString, Get: func() msg.Value { return msg.Value{Type: msg.VarString, String: "boiler 1"} }},
			},
			OnEvent:  func(e msg.Event) { sd.events <- e },
			OnSignal: func(on bool) { sd.signals <- on },
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	h, err := devsim.NewHeater(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sd.h = h
	ts.keys.add(testID(i), &key.PublicKey)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { sd.done <- h.Device().Dial(ctx, ts.addr) }()
	t.Cleanup(func() {
		cancel()
		recv(t, sd.done, "device end")
	})
	waitFor(t, waitLong, "session", func() bool {
		sd.s = ts.srv.Session(testID(i))
		return sd.s != nil
	})
	return sd
}

// TestDevsim: every message type between the server and a simulated Core,
// 0.7 Photon and 0.8 Photon over TCP.
func TestDevsim(t *testing.T) {
	for _, fw := range firmwares {
		t.Run(fw.String(), func(t *testing.T) {
			ctx := context.Background()
			now := time.Unix(1_750_000_000, 0)
			ts := startServer(t, func(c *Config) {
				c.Now = func() time.Time { return now }
				c.AppDescribeDelay = 0 // default: 5 s
			})
			sd := startSim(t, ts, fw, 1, nil)
			s := sd.s
			wantKind := handshake.Photon
			if fw == devsim.Core {
				wantKind = handshake.Core
			}
			if s.Info().Kind != wantKind {
				t.Errorf("kind %v", s.Info().Kind)
			}

			// Describe: the first answer is empty; Describe waits for the
			// application's (triggered by its Subscribe).
			d, err := s.Describe(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(d.Functions, "heater") || d.Variables["temp"] != msg.VarDouble ||
				d.Variables["state"] != msg.VarInt || d.Variables["flag"] != msg.VarBool || d.Variables["label"] != msg.VarString {
				t.Fatalf("description %+v", d)
			}

			// Functions, with and without an argument.
			for _, c := range []struct {
				arg  string
				want int32
			}{{"on", 1}, {"off", 0}, {"", -1}, {"bogus", -1}, {"on", 1}} {
				got, err := s.Call(ctx, "heater", c.arg)
				if err != nil || got != c.want {
					t.Fatalf("Call(heater, %q) = %d, %v; want %d", c.arg, got, err, c.want)
				}
			}
			if !sd.h.On() {
				t.Error("heater off after on")
			}

			// Variables of every type.
			for _, v := range []struct {
				name string
				ok   func(msg.Value) bool
			}{
				{"temp", func(v msg.Value) bool { return v.Type == msg.VarDouble && v.Double > 0 }},
				{"state", func(v msg.Value) bool { return v.Type == msg.VarInt && v.Int == 1 }},
				{"flag", func(v msg.Value) bool { return v.Type == msg.VarBool && v.Bool }},
				{"label", func(v msg.Value) bool { return v.Type == msg.VarString && v.String == "boiler 1" }},
			} {
				got, err := s.Get(ctx, v.name)
				if err != nil || !v.ok(got) {
					t.Fatalf("Get(%s) = %+v, %v", v.name, got, err)
				}
			}
			if _, err := s.Get(ctx, "nope"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get(nope) = %v", err)
			}

			// Device events: public, private with a TTL, a name with '/'.
			dev := sd.h.Device()
			for _, e := range []msg.Event{
				{Name: "temperature", Data: []byte("48.5"), TTL: 60},
				{Name: "alarm/high", Data: []byte("1"), TTL: 21600, Private: true},
				{Name: "empty", TTL: 60},
			} {
				if err := dev.Publish(ctx, e.Name, e.Data, e.TTL, e.Private); err != nil {
					t.Fatal(err)
				}
				got := recv(t, ts.rec.events, "event")
				for IsSystemEvent(got.e.Name) {
					got = recv(t, ts.rec.events, "event")
				}
				if got.e.Name != e.Name || string(got.e.Data) != string(e.Data) || got.e.TTL != e.TTL || got.e.Private != e.Private {
					t.Fatalf("event %+v, want %+v", got.e, e)
				}
			}

			// Events to the device: only matching its subscriptions.
			if err := s.Send(ctx, msg.Event{Name: "heater/cmd", Data: []byte("on")}); err != nil {
				t.Fatal(err)
			}
			if e := recv(t, sd.events, "event to device"); e.Name != "heater/cmd" || string(e.Data) != "on" {
				t.Fatalf("device got %+v", e)
			}
			if err := s.Send(ctx, msg.Event{Name: "other"}); !errors.Is(err, ErrNotSubscribed) {
				t.Fatalf("Send(other) = %v", err)
			}

			// GetTime.
			if tm, err := dev.SyncTime(ctx); err != nil || !tm.Equal(now) {
				t.Fatalf("SyncTime = %v, %v", tm, err)
			}
			// Pings both ways.
			if err := dev.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			// Signal on and off.
			for _, on := range []bool{true, false} {
				if err := s.Signal(ctx, on); err != nil {
					t.Fatal(err)
				}
				if got := recv(t, sd.signals, "signal"); got != on {
					t.Fatalf("signal %v, want %v", got, on)
				}
			}
			// The counter survived all of it (0.8 ACKs included): a last
			// event still goes through.
			if err := dev.Publish(ctx, "last", nil, 60, false); err != nil {
				t.Fatal(err)
			}
			for e := recv(t, ts.rec.events, "event"); e.e.Name != "last"; e = recv(t, ts.rec.events, "event") {
			}
			// Limits are refused before the device sees anything.
			calls := dev.Stats().Calls
			if _, err := s.Call(ctx, "heater", string(make([]byte, 64))); !errors.Is(err, ErrArgTooLong) {
				t.Fatalf("Call(64 bytes) = %v", err)
			}
			if dev.Stats().Calls != calls {
				t.Fatal("the device saw the refused call")
			}
			st := ts.srv.Stats()
			if st.UnknownTokens+st.LateResponses+st.UnknownAcks+st.Duplicates+st.UnknownRequests != 0 {
				t.Errorf("stats %+v", st)
			}
			if s.Err() != nil {
				t.Fatal(s.Err())
			}
		})
	}
}

// TestDevsimReconnect: a device that reconnects replaces its session, and
// many devices run side by side.
func TestDevsimReconnect(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, func(c *Config) { c.AppDescribeDelay = 0 })
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			sd := startSim(t, ts, firmwares[i%3], i, nil)
			if _, err := sd.s.Describe(ctx); err != nil {
				t.Errorf("device %d: Describe: %v", i, err)
				return
			}
			if got, err := sd.s.Call(ctx, "heater", "on"); err != nil || got != 1 {
				t.Errorf("device %d: Call = %d, %v", i, got, err)
			}
		})
	}
	wg.Wait()
	if n := len(ts.srv.Sessions()); n != 6 {
		t.Fatalf("%d sessions", n)
	}
	old := ts.srv.Session(testID(0))
	sd := startSim(t, ts, devsim.Photon08, 0, nil) // the same id again
	waitFor(t, waitLong, "replacement", func() bool {
		s := ts.srv.Session(testID(0))
		return s != nil && s != old
	})
	if r := ts.sessionEnd(t, old); r != Replaced {
		t.Fatalf("old session reason %v", r)
	}
	sd.s = ts.srv.Session(testID(0))
	if got, err := sd.s.Call(ctx, "heater", "off"); err != nil || got != 0 {
		t.Fatalf("Call on the new session = %d, %v", got, err)
	}
}
