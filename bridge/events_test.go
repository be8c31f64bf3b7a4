package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// eventSink collects the events a devsim device receives.
type eventSink chan msg.Event

func (s eventSink) next(t *testing.T, what string) msg.Event {
	t.Helper()
	select {
	case e := <-s:
		return e
	case <-time.After(waitLong):
		t.Fatalf("%s: no event", what)
	}
	return msg.Event{}
}

func (s eventSink) none(t *testing.T, what string) {
	t.Helper()
	select {
	case e := <-s:
		t.Errorf("%s: unexpected event %q", what, e.Name)
	default:
	}
}

// subscribedDevice adds a device subscribed to the prefixes, recording the
// events it receives.
func (h *harness) subscribedDevice(i int, prefixes ...string) (*device, eventSink) {
	sink := make(eventSink, 16)
	var subs []msg.Subscription
	for _, p := range prefixes {
		subs = append(subs, msg.Subscription{Prefix: p})
	}
	d := h.addDevice(devsim.Config{DeviceID: testID(i), Subscriptions: subs, OnEvent: func(e msg.Event) { sink <- e }})
	return d, sink
}

// waitSubscribed waits until the server has the device's subscription.
func (h *harness) waitSubscribed(d *device, name string) {
	h.t.Helper()
	id, err := keys.ParseDeviceID(d.id)
	if err != nil {
		h.t.Fatal(err)
	}
	waitFor(h.t, "subscription "+name, func() bool {
		s := h.srv.Session(id)
		return s != nil && s.Subscribed(name)
	})
}

// TestEvents: device events go to MQTT and to the other devices subscribed
// to them (not back to the publisher); spark/events/... reaches only the
// devices whose prefix matches; system events stay inside.
func TestEvents(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	a, aIn := h.subscribedDevice(2, "shared", "spark")
	b, bIn := h.subscribedDevice(3, "shared")
	c, cIn := h.subscribedDevice(4, "foo")
	for _, d := range []*device{a, b, c} {
		d.connect()
	}
	h.waitSubscribed(a, "spark/x")
	h.waitSubscribed(b, "shared")
	h.waitSubscribed(c, "foo")
	ctx := context.Background()

	if err := a.Publish(ctx, "shared/temp", []byte("21.5"), 60, false); err != nil {
		t.Fatal(err)
	}
	u.waitPayload(topicOf(a.id, "event", "shared", "temp"), "21.5")
	if e := bIn.next(t, "b from a"); e.Name != "shared/temp" || string(e.Data) != "21.5" {
		t.Errorf("b got %q %q", e.Name, e.Data)
	}

	u.publish("spark/events/foo/bar", "x")
	if e := cIn.next(t, "c from MQTT"); e.Name != "foo/bar" || string(e.Data) != "x" {
		t.Errorf("c got %q %q", e.Name, e.Data)
	}

	// A system event: not published, not forwarded (a is subscribed to "spark").
	if err := b.Publish(ctx, "spark/device/last_reset", []byte("power_down"), 60, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "system event counted", func() bool { return h.br.Stats().EventsSystem == 1 })

	// Sync point: one more MQTT event for c, then nothing else may have arrived anywhere.
	u.publish("spark/events/foo/end", "")
	cIn.next(t, "c end")
	aIn.none(t, "a (publisher of shared/temp, not subscribed to foo)")
	bIn.none(t, "b (not subscribed to foo)")
	cIn.none(t, "c")
	if n := u.count(topicOf(b.id, "event", "spark", "device", "last_reset"), nil); n != 0 {
		t.Errorf("system event published %d times", n)
	}
	st := h.br.Stats()
	if st.EventsIn != 2 || st.EventsOut != 1 || st.EventsFromMQTT != 2 || st.EventsToDevices != 3 {
		t.Errorf("stats = %+v", st)
	}
}

// TestSystemEventsFlag: with SystemEvents on they are published too.
func TestSystemEventsFlag(t *testing.T) {
	h := newHarness(t, Config{SystemEvents: true})
	u := h.newUser()
	h.startBridge()
	d := h.addDevice(devsim.Config{DeviceID: testID(2)})
	d.connect()
	if err := d.Publish(context.Background(), "spark/device/last_reset", []byte("pin_reset"), 60, true); err != nil {
		t.Fatal(err)
	}
	u.waitPayload(topicOf(d.id, "event", "spark", "device", "last_reset"), "pin_reset")
}
