package external

import (
	"strings"
	"testing"
)

func drainAll(o *outbox) string {
	var out []string
	for e := o.popFront(); e != nil; e = o.popFront() {
		out = append(out, e.topic+"="+string(e.payload))
	}
	return strings.Join(out, " ")
}

func TestOutboxOrderAndCoalescing(t *testing.T) {
	var o outbox
	push := func(topic, payload string, retain bool) bool {
		return o.pushBack(&entry{topic: topic, payload: []byte(payload), qos: 1, retain: retain})
	}
	push("ev", "1", false)
	push("var/temp", "20", true)
	push("ev", "2", false)
	push("state", "on", true)
	if !o.wouldReplace(&entry{topic: "var/temp", retain: true}) || o.wouldReplace(&entry{topic: "var/temp"}) {
		t.Error("wouldReplace")
	}
	if !push("var/temp", "21", true) {
		t.Error("a second retained message for var/temp did not replace the first")
	}
	if push("ev", "3", false) {
		t.Error("a non-retained message replaced something")
	}
	if o.len() != 5 {
		t.Errorf("len = %d, want 5", o.len())
	}
	// The newer retained value moved to the back: it is sent after what
	// was published before it.
	if got, want := drainAll(&o), "ev=1 ev=2 state=on var/temp=21 ev=3"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if o.len() != 0 || len(o.retained) != 0 {
		t.Errorf("not empty after draining: %d, %v", o.len(), o.retained)
	}
}

func TestOutboxRequeue(t *testing.T) {
	var o outbox
	taken := []*entry{
		{topic: "a", payload: []byte("1"), retain: true},
		{topic: "ev", payload: []byte("x")},
		{topic: "b", payload: []byte("1"), retain: true},
		{topic: "b", payload: []byte("2"), retain: true},
	}
	// While those were in flight, a newer value for a was buffered.
	o.pushBack(&entry{topic: "a", payload: []byte("2"), retain: true})
	o.pushBack(&entry{topic: "ev", payload: []byte("y")})
	superseded := o.pushFront(taken)
	if superseded != 2 {
		t.Errorf("superseded = %d, want 2 (a=1 by the buffered a=2, b=1 by b=2)", superseded)
	}
	if got, want := drainAll(&o), "ev=x b=2 a=2 ev=y"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestOutboxClear(t *testing.T) {
	var o outbox
	o.pushBack(&entry{topic: "a", retain: true})
	o.pushBack(&entry{topic: "b"})
	if n := o.clear(); n != 2 || o.len() != 0 || o.popFront() != nil {
		t.Errorf("clear = %d, len %d", n, o.len())
	}
	if o.pushBack(&entry{topic: "a", retain: true}) {
		t.Error("clear left the retained index behind")
	}
}
