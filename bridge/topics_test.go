package bridge

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTopic(t *testing.T) {
	for _, base := range []string{"spark", "home/spark"} {
		tp := topics{base: base}
		for _, tc := range []struct {
			rest    string
			r       route
			d, name string
		}{
			{"heater/fn/heater", routeCall, "heater", "heater"},
			{"heater/fn/call", routeCall, "heater", "call"},
			{"heater/fn/heater/call", routeCallJSON, "heater", "heater"},
			{"heater/fn/heater/pending", routePending, "heater", "heater"},
			{"heater/var/temp/get", routeGet, "heater", "temp"},
			{"heater/signal", routeSignal, "heater", ""},
			{"heater/availability", routeAvailability, "heater", ""},
			{"heater/remove", routeRemove, "heater", ""},
			{"bridge/remove", routeNone, "", ""},
			{"heater/remove/x", routeNone, "", ""},
			{"bridge/devices", routeInventory, "", ""},
			{"events/a/b/c", routeEvent, "", "a/b/c"},
			{"events/a//b", routeEvent, "", "a//b"},
			{"events/", routeNone, "", ""},
			{"bridge/state", routeNone, "", ""},
			{"bridge/fn/x", routeNone, "", ""},
			{"events/fn/x/call", routeEvent, "", "fn/x/call"},
			{"heater/fn/heater/result", routeNone, "", ""},
			{"heater/var/temp", routeNone, "", ""},
			{"heater//signal", routeNone, "", ""},
			{"heater/fn/a/b/c", routeNone, "", ""},
			{"", routeNone, "", ""},
		} {
			r, d, name := tp.parse(base + "/" + tc.rest)
			if r != tc.r || d != tc.d || name != tc.name {
				t.Errorf("%s/%s: got %v %q %q, want %v %q %q", base, tc.rest, r, d, name, tc.r, tc.d, tc.name)
			}
		}
		if r, _, _ := tp.parse("other/heater/signal"); r != routeNone {
			t.Errorf("foreign base parsed as %v", r)
		}
	}
}

func TestValidLevel(t *testing.T) {
	for _, tc := range []struct {
		s  string
		ok bool
	}{
		{"heater", true}, {"Küche", true}, {"a b", true},
		{"", false}, {"a/b", false}, {"a+", false}, {"#", false}, {"a\x00", false}, {"\xff", false},
		{strings.Repeat("x", 257), false},
	} {
		err := ValidLevel(tc.s)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrTopicLevel)) {
			t.Errorf("ValidLevel(%q) = %v, want ok %v", tc.s, err, tc.ok)
		}
	}
	for _, tc := range []struct {
		base string
		ok   bool
	}{{"spark", true}, {"home/spark", true}, {"", false}, {"/spark", false}, {"spark/", false}, {"sp+rk", false}} {
		if err := validBaseTopic(tc.base); (err == nil) != tc.ok {
			t.Errorf("validBaseTopic(%q) = %v", tc.base, err)
		}
	}
}

func TestIsSystemEvent(t *testing.T) {
	for name, want := range map[string]bool{
		"spark/device/last_reset": true, "SPARK/x": true, "particle/device/name": true, "sparkle": true,
		"temperature": false, "my/spark": false, "": false,
	} {
		if got := isSystemEvent(name); got != want {
			t.Errorf("isSystemEvent(%q) = %v", name, got)
		}
	}
}

// FuzzTopic: parse never panics, and what it accepts rebuilds to the same
// topic from valid parts.
func FuzzTopic(f *testing.F) {
	for _, s := range []string{"spark/heater/fn/heater", "spark/heater/fn/heater/call", "spark/x/var/t/get",
		"spark/events/a/b", "spark/bridge/devices", "spark/d/signal", "spark/d/fn/f/pending", "spark/d/availability", "spark//fn/x", "spark/d/remove"} {
		f.Add(s)
	}
	tp := topics{base: "spark"}
	f.Fuzz(func(t *testing.T, topic string) {
		r, d, name := tp.parse(topic)
		var rebuilt string
		switch r {
		case routeNone:
			return
		case routeCall:
			rebuilt = tp.join(d, lvlFn, name)
		case routeCallJSON:
			rebuilt = tp.join(d, lvlFn, name, lvlCall)
		case routePending:
			rebuilt = tp.pending(d, name)
		case routeGet:
			rebuilt = tp.join(d, lvlVar, name, lvlGet)
		case routeSignal:
			rebuilt = tp.join(d, lvlSignal)
		case routeAvailability:
			rebuilt = tp.availability(d)
		case routeInventory:
			rebuilt = tp.inventory()
		case routeRemove:
			rebuilt = tp.join(d, lvlRemove)
		case routeEvent:
			if validEventName(name) != nil {
				t.Fatalf("event %q accepted", name)
			}
			rebuilt = tp.join(lvlEvents, name)
		}
		if rebuilt != topic {
			t.Fatalf("%q parsed as %v %q %q, rebuilt %q", topic, r, d, name, rebuilt)
		}
		if r != routeEvent && r != routeInventory {
			if ValidLevel(d) != nil || d == lvlBridge || d == lvlEvents {
				t.Fatalf("device level %q accepted", d)
			}
			if name != "" && ValidLevel(name) != nil {
				t.Fatalf("name %q accepted", name)
			}
		}
	})
}
