package embedded

import (
	"fmt"
	"slices"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// TestPersistenceAcrossRestart stops a broker and starts another on the same
// data dir: retained messages, a persistent session's subscription and a
// QoS 1 message queued for that session while it was offline are all there.
func TestPersistenceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.DataDir = dir
	cfg.Will = &broker.Message{Topic: "spark/bridge/state", Payload: []byte("offline"), QoS: 1, Retain: true}

	persistent := func(b *Broker, got chan<- paho.Message) *paho.ClientOptions {
		return pahoOptions(tcpURL(b), "persistent-app").
			SetCleanSession(false).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m })
	}

	// First run.
	b1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Start(); err != nil {
		t.Fatal(err)
	}
	bridge := b1.NewClient()
	retained := map[string]string{}
	for i := range 50 {
		topic := fmt.Sprintf("spark/dev%d/var/temp", i)
		retained[topic] = fmt.Sprint(40 + i)
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: topic, Payload: []byte(retained[topic]), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	// A retained message removed before the restart stays removed.
	for _, p := range []string{"gone", ""} {
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/x/fn/f/pending", Payload: []byte(p), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/bridge/state", Payload: []byte("online"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	early := make(chan paho.Message, 10)
	app := connectPaho(t, persistent(b1, early))
	if err := wait(ctxT(t), app.Subscribe("spark/+/fn/+/result", 1, nil)); err != nil {
		t.Fatal(err)
	}
	app.Disconnect(100)
	// Queued for the offline session (in flight, QoS 1).
	if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/heater/fn/heater/result", Payload: []byte(`{"return_value":1}`), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	_ = bridge.Close(ctxT(t))
	closeBroker(t, b1)

	// Second run on the same data dir.
	b2 := startBroker(t, cfg)
	bridge = b2.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	col := &collector{}
	if _, err := bridge.Subscribe(ctxT(t), "spark/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range col.wait(t, len(retained)+1) {
		if !m.Retain {
			t.Errorf("%s delivered with Retain false on subscribe", m.Topic)
		}
		got[m.Topic] = string(m.Payload)
	}
	retained["spark/bridge/state"] = "offline" // the will, published again at Start
	for topic, want := range retained {
		if got[topic] != want {
			t.Errorf("after restart %s = %q, want %q", topic, got[topic], want)
		}
	}
	if len(got) != len(retained) {
		t.Errorf("after restart %d retained messages, want %d: %v", len(got), len(retained), got)
	}

	// The session comes back with its queued message and its subscription.
	msgs := make(chan paho.Message, 10)
	app = connectPaho(t, persistent(b2, msgs))
	select {
	case m := <-msgs:
		if m.Topic() != "spark/heater/fn/heater/result" || string(m.Payload()) != `{"return_value":1}` {
			t.Errorf("queued message: got %s %q", m.Topic(), m.Payload())
		}
	case <-time.After(testTimeout):
		t.Fatal("the message queued for the offline session was not delivered after the restart")
	}
	if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/heater/fn/heater/result", Payload: []byte("after"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if string(m.Payload()) != "after" {
			t.Errorf("got %s %q, want the new result", m.Topic(), m.Payload())
		}
	case <-time.After(testTimeout):
		t.Fatal("the restored subscription did not deliver")
	}
	app.Disconnect(100)

	// The inline client's subscriptions were never stored as a session.
	stored, err := b2.store.StoredSubscriptions()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stored {
		if s.Client != "persistent-app" {
			t.Errorf("stored subscription of %q (%s)", s.Client, s.Filter)
		}
	}
}

// retainedWatch records the retained messages the broker expires.
type retainedWatch struct {
	mqtt.HookBase
	expired chan string
}

func (h *retainedWatch) ID() string           { return "test-retained-watch" }
func (h *retainedWatch) Provides(b byte) bool { return b == mqtt.OnRetainedExpired }
func (h *retainedWatch) OnRetainedExpired(topic string) {
	h.expired <- topic
}

// TestRetainedNeverExpires shows that a retained message two days old
// survives mochi's expiry sweep, where mochi's default (24 h) deletes it.
// Instead of waiting two days, the message's creation time is moved back;
// instead of sleeping, the test waits for two sweeps to have run, seen
// through canary messages that carry their own, already past, MQTT 5
// expiry (which the sweep always honours).
func TestRetainedNeverExpires(t *testing.T) {
	for _, tc := range []struct {
		name      string
		maxExpiry int64 // -1: ours
		survives  bool
	}{
		{"embedded defaults", -1, true},
		{"mochi default 24h", 24 * 60 * 60, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.DataDir = t.TempDir()
			b, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tc.maxExpiry >= 0 {
				b.srv.Options.Capabilities.MaximumMessageExpiryInterval = tc.maxExpiry
			}
			watch := &retainedWatch{expired: make(chan string, 10)}
			if err := b.srv.AddHook(watch, nil); err != nil {
				t.Fatal(err)
			}
			if err := b.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closeBroker(t, b) })

			c := b.NewClient()
			t.Cleanup(func() { _ = c.Close(ctxT(t)) })
			const topic = "homeassistant/device/heater/config"
			if err := c.Publish(ctxT(t), broker.Message{Topic: topic, Payload: []byte(`{"dev":{}}`), QoS: 1, Retain: true}); err != nil {
				t.Fatal(err)
			}
			pk, ok := b.srv.Topics.Retained.Get(topic)
			if !ok {
				t.Fatal("retained message missing")
			}
			if tc.survives && pk.Expiry != 0 {
				t.Errorf("retained message has expiry %d, want none", pk.Expiry)
			}
			pk.Created = time.Now().Add(-48 * time.Hour).Unix()
			b.srv.Topics.RetainMessage(pk)

			for i := range 2 {
				canary := fmt.Sprintf("test/canary/%d", i)
				now := time.Now().Unix()
				b.srv.Topics.RetainMessage(packets.Packet{
					FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true},
					TopicName:       canary,
					Payload:         []byte("x"),
					ProtocolVersion: 5,
					Created:         now - 10,
					Expiry:          now - 5,
				})
				deadline := time.After(testTimeout)
				for seen := false; !seen; {
					select {
					case got := <-watch.expired:
						seen = got == canary
					case <-deadline:
						t.Fatalf("the expiry sweep did not run")
					}
				}
			}
			// Sweep 1 ended before sweep 2 began: both have seen the message.
			_, ok = b.srv.Topics.Retained.Get(topic)
			if ok != tc.survives {
				t.Fatalf("aged retained message present = %v after two sweeps, want %v", ok, tc.survives)
			}
			if !tc.survives {
				return
			}
			col := &collector{}
			if _, err := c.Subscribe(ctxT(t), "homeassistant/#", 0, col.handle); err != nil {
				t.Fatal(err)
			}
			if got := col.wait(t, 1); !slices.ContainsFunc(got, func(m broker.Message) bool { return m.Topic == topic }) {
				t.Errorf("subscribe after the sweeps got %v, want %s", got, topic)
			}
			// And it is still in the store.
			stored, err := b.store.StoredRetainedMessages()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(stored, func(m storage.Message) bool { return m.TopicName == topic }) {
				t.Error("aged retained message missing from the store")
			}
		})
	}
}

// TestInflightStoredForPersistentSessionsOnly: a QoS 1 delivery not yet
// acknowledged is written to the store for a session that outlives its
// connection (MQTT 3 clean session false, MQTT 5 session expiry > 0) and
// not for one that ends with it, whose in-flight messages mochi would
// discard at disconnect anyway; the acknowledgement removes the record.
func TestInflightStoredForPersistentSessionsOnly(t *testing.T) {
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	b := startBroker(t, cfg)
	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })

	clients := []struct {
		name       string
		version    byte
		connect    packets.ConnectParams
		props      packets.Properties
		persistent bool
	}{
		{name: "v3-clean", version: 4, connect: packets.ConnectParams{Clean: true}},
		{name: "v3-persistent", version: 4, persistent: true},
		{name: "v5-expiry-0", version: 5, connect: packets.ConnectParams{Clean: true}},
		{name: "v5-expiry-60", version: 5, props: packets.Properties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}, persistent: true},
	}
	raws := map[string]*rawClient{}
	for _, c := range clients {
		c.connect.ClientIdentifier = c.name
		raw, ack := dialRaw(t, b.Addr().String(), c.version, packets.Packet{Connect: c.connect, Properties: c.props})
		if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
			t.Fatalf("%s: CONNACK %+v", c.name, ack)
		}
		raw.Subscribe("spark/+/event/#", 1)
		raws[c.name] = raw
	}
	if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/d/event/e", Payload: []byte("x"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint16{}
	for _, c := range clients {
		pk := raws[c.name].Read() // not acknowledged yet
		if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 {
			t.Fatalf("%s: got %+v, want a QoS 1 PUBLISH", c.name, pk)
		}
		ids[c.name] = pk.PacketID
	}
	storedFor := func() map[string]bool {
		msgs, err := b.store.StoredInflightMessages()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, msg := range msgs {
			m[msg.Client] = true
		}
		return m
	}
	got := storedFor()
	for _, c := range clients {
		if got[c.name] != c.persistent {
			t.Errorf("%s: in-flight message stored = %v, want %v", c.name, got[c.name], c.persistent)
		}
	}

	for _, c := range clients {
		raws[c.name].Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: ids[c.name]})
	}
	waitFor(t, "acknowledged in-flight records removed", func() bool { return len(storedFor()) == 0 })
}
