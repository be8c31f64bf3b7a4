package external

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

func TestCheckTopic(t *testing.T) {
	for _, c := range []struct {
		topic string
		ok    bool
	}{
		{"spark/bridge/state", true},
		{"a", true},
		{"/", true},
		{"a//b", true},
		{"$SYS/x", true},
		{"héllo/wörld", true},
		{"", false},
		{"+", false},
		{"#", false},
		{"a/+/b", false},
		{"a/b#", false},
		{"a+b", false},
		{"nul\x00", false},
		{"bad\xffutf8", false},
		{strings.Repeat("x", 65536), false},
	} {
		err := checkTopic(c.topic)
		if (err == nil) != c.ok {
			t.Errorf("checkTopic(%.20q) = %v, want ok %v", c.topic, err, c.ok)
		}
		if err != nil && !errors.Is(err, broker.ErrInvalidTopic) {
			t.Errorf("checkTopic(%.20q): %v does not wrap ErrInvalidTopic", c.topic, err)
		}
	}
}

func TestParseFilter(t *testing.T) {
	for _, c := range []struct {
		filter string
		levels []string // nil: invalid
	}{
		{"a/b", []string{"a", "b"}},
		{"#", []string{"#"}},
		{"+", []string{"+"}},
		{"a/+/c/#", []string{"a", "+", "c", "#"}},
		{"+/+", []string{"+", "+"}},
		{"/", []string{"", ""}},
		{"$share/g/a/#", []string{"a", "#"}},
		{"", nil},
		{"a/#/b", nil},
		{"a#", nil},
		{"a/b#", nil},
		{"a+", nil},
		{"a/+b", nil},
		{"nul\x00", nil},
		{"$share/g", nil},
		{"$share//a", nil},
		{"$share/g+/a", nil},
	} {
		got, err := parseFilter(c.filter)
		if c.levels == nil {
			if !errors.Is(err, broker.ErrInvalidTopic) {
				t.Errorf("parseFilter(%q) = %q, %v; want ErrInvalidTopic", c.filter, got, err)
			}
			continue
		}
		if err != nil || strings.Join(got, "|") != strings.Join(c.levels, "|") {
			t.Errorf("parseFilter(%q) = %q, %v; want %q", c.filter, got, err, c.levels)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "/", true},
		{"+/+", "/", true},
		{"+", "/", false},
		{"/+", "/x", true},
		{"+/b/#", "x/b", true},
		{"#", "$SYS/broker", false},
		{"+/broker", "$SYS/broker", false},
		{"$SYS/#", "$SYS/broker", true},
		{"$SYS/+", "$SYS/broker", true},
		{"a/+/#", "a/x", true},
	} {
		levels, err := parseFilter(c.filter)
		if err != nil {
			t.Fatal(err)
		}
		if got := match(levels, c.topic); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
		if got := refMatch(c.filter, c.topic); got != c.want {
			t.Errorf("refMatch(%q, %q) = %v, want %v (the reference is wrong)", c.filter, c.topic, got, c.want)
		}
	}
}

// refMatch is a plain, recursive statement of MQTT 3.1.1 §4.7 to check
// match against.
func refMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	var rec func(f, t []string) bool
	rec = func(f, t []string) bool {
		switch {
		case len(f) == 0:
			return len(t) == 0
		case f[0] == "#":
			return true
		case len(t) == 0:
			return false
		case f[0] == "+" || f[0] == t[0]:
			return rec(f[1:], t[1:])
		}
		return false
	}
	return rec(strings.Split(filter, "/"), strings.Split(topic, "/"))
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"a/+/c", "a/b/c"}, {"#", "$SYS/x"}, {"a/#", "a"}, {"+/+", "/"}, {"spark/+/fn/#", "spark/dev/fn/heater"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		levels, err := parseFilter(filter)
		if err != nil {
			if !errors.Is(err, broker.ErrInvalidTopic) {
				t.Fatalf("parseFilter(%q): %v does not wrap ErrInvalidTopic", filter, err)
			}
			return
		}
		if checkTopic(topic) != nil || strings.HasPrefix(filter, "$share/") {
			return
		}
		if got, want := match(levels, topic), refMatch(filter, topic); got != want {
			t.Fatalf("match(%q, %q) = %v, reference says %v", filter, topic, got, want)
		}
		// A valid topic is a filter that matches itself (unless it reads
		// as a shared subscription).
		if strings.HasPrefix(topic, "$share/") {
			return
		}
		self, err := parseFilter(topic)
		if err != nil || !match(self, topic) {
			t.Fatalf("topic %q does not match itself (%v)", topic, err)
		}
	})
}

func TestPacketSize(t *testing.T) {
	for _, c := range []struct {
		topic   string
		payload int
		qos     byte
	}{
		{"a", 0, 0},
		{"a", 0, 1},
		{"spark/bridge/state", 7, 1},
		{"t", 121, 0},   // remaining length 124: one byte
		{"t", 125, 0},   // 128: two bytes
		{"t", 16380, 1}, // around the two/three byte boundary
		{"t", 16381, 1},
		{"t", 2097148, 0}, // three/four bytes
		{"t", 2097149, 0},
	} {
		pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pub.TopicName, pub.Qos, pub.Payload = c.topic, c.qos, make([]byte, c.payload)
		if c.qos > 0 {
			pub.MessageID = 1
		}
		var b bytes.Buffer
		if err := pub.Write(&b); err != nil {
			t.Fatal(err)
		}
		if got := packetSize(c.topic, c.payload, c.qos); got != b.Len() {
			t.Errorf("packetSize(%q, %d, %d) = %d, paho writes %d bytes", c.topic, c.payload, c.qos, got, b.Len())
		}
	}
}
