package main

import (
	"strings"
	"testing"
	"time"
)

// TestSimulateLoad: `spark2mqtt simulate --count N --events M` connects the
// fleet, waits for its go on standard input, publishes M events spread over
// the devices, and says so; every event reaches MQTT. At a rate (a few
// goroutines share the devices) and at full speed (one per device).
func TestSimulateLoad(t *testing.T) {
	for _, tc := range []struct{ name, rate, says string }{
		{"rate", "1000", "publishing 30 events at 1000/s"},
		{"full speed", "0", "publishing 30 events at full speed"},
	} {
		t.Run(tc.name, func(t *testing.T) { simulateLoad(t, tc.rate, tc.says) })
	}
}

func simulateLoad(t *testing.T, rate, says string) {
	const devices, events = 3, 30
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	w := newWatcher(t, srv.MQTTAddr, "spark/+/event/load")
	sim := startSimulator(t, srv, dataDir, "--count", "3", "--events", "30", "--rate", rate, "--start-stdin")
	if l := sim.waitLine(time.Minute, "all "); !strings.HasPrefix(l, "all 3 connected in ") || !strings.HasSuffix(l, ", 0 failed attempts") {
		t.Errorf("got %q, want all 3 connected with no failed attempt", l)
	}
	sim.send("go")
	if l := sim.waitLine(time.Minute, "publishing "); l != says {
		t.Errorf("got %q, want %q", l, says)
	}
	if l := sim.waitLine(time.Minute, "published "); !strings.HasPrefix(l, "published 30 events in ") || !strings.HasSuffix(l, ", 0 failed") {
		t.Errorf("got %q, want 30 events published, none failed", l)
	}
	waitFor(t, 10*time.Second, "every event on MQTT", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.msgs) >= events
	})
	per := map[string]int{}
	w.mu.Lock()
	for _, m := range w.msgs {
		per[m.Topic]++
	}
	w.mu.Unlock()
	if len(per) != devices {
		t.Errorf("events from %d devices, want %d: %v", len(per), devices, per)
	}
	for topic, n := range per {
		if n != events/devices {
			t.Errorf("%s: %d events, want %d", topic, n, events/devices)
		}
	}
	sim.stop()
	srv.stop()
}
