package bridge

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// subDev is a Device for the index tests: only its identity matters.
type subDev struct {
	Device
	name string
}

// TestSubIndex: an event reaches each session whose prefix starts its name
// once, never its publisher; a session's subscriptions go with it, and a
// newer session of the same device replaces them.
func TestSubIndex(t *testing.T) {
	a1, a2, b, c := &subDev{name: "a1"}, &subDev{name: "a2"}, &subDev{name: "b"}, &subDev{name: "c"}
	var x subIndex
	x.add("a", a1, "temp")
	x.add("a", a1, "temp/") // a second prefix matching the same events
	x.add("a", a1, "temp")  // a repeat
	x.add("b", b, "t")
	x.add("c", c, "humidity")

	match := func(name, except string) []string {
		var got []string
		for _, tg := range x.match(name, except, nil) {
			got = append(got, tg.id+"="+tg.d.(*subDev).name)
		}
		slices.Sort(got)
		return got
	}
	for _, tc := range []struct {
		name, event, except string
		want                []string
	}{
		{"all prefixes", "temp/kitchen", "", []string{"a=a1", "b=b"}},
		{"shorter prefix only", "tea", "", []string{"b=b"}},
		{"publisher skipped", "temp", "a", []string{"b=b"}},
		{"no match", "door", "", nil},
		{"whole name", "humidity", "", []string{"c=c"}},
		{"prefix longer than the name", "te", "", []string{"b=b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, match(tc.event, tc.except)); diff != "" {
				t.Errorf("match(%q) (-want +got):\n%s", tc.event, diff)
			}
		})
	}

	x.add("a", a2, "door") // a newer session of a: a1's subscriptions went with it
	if diff := cmp.Diff([]string{"b=b"}, match("temp", "")); diff != "" {
		t.Errorf("after the new session, temp (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a=a2"}, match("door", "")); diff != "" {
		t.Errorf("after the new session, door (-want +got):\n%s", diff)
	}
	x.remove("a", a1) // the old session's end does not touch the new one
	if diff := cmp.Diff([]string{"a=a2"}, match("door", "")); diff != "" {
		t.Errorf("after the old session's end (-want +got):\n%s", diff)
	}
	for _, id := range []string{"a", "b", "c"} {
		d := map[string]Device{"a": a2, "b": b, "c": c}[id]
		x.remove(id, d)
	}
	if len(x.byID) != 0 || len(x.byPrefix) != 0 || len(x.lens) != 0 || len(x.nlen) != 0 {
		t.Errorf("index not empty after every session ended: %d ids, %d prefixes, lengths %v", len(x.byID), len(x.byPrefix), x.lens)
	}
	if got := match(strings.Repeat("t", 64), ""); got != nil {
		t.Errorf("empty index matched %v", got)
	}
}
