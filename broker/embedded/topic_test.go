package embedded

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

func TestValidTopicAndFilter(t *testing.T) {
	for _, tc := range []struct {
		s             string
		topic, filter bool
	}{
		{"spark/heater/var/temp", true, true},
		{"a", true, true},
		{"/", true, true},
		{"a//b", true, true},
		{"$SYS/broker/uptime", true, true},
		{"", false, false},
		{"+", false, true},
		{"#", false, true},
		{"a/+/b", false, true},
		{"a/#", false, true},
		{"+/+/#", false, true},
		{"a/#/b", false, false},
		{"a#", false, false},
		{"a/b#", false, false},
		{"a+", false, false},
		{"a/+b", false, false},
		{"nul\x00", false, false},
		{"bad\xffutf8", false, false},
		{"$share/g/a", true, false},
		{strings.Repeat("x", 65536), false, false},
	} {
		if got := validTopic(tc.s); got != tc.topic {
			t.Errorf("validTopic(%.20q) = %v, want %v", tc.s, got, tc.topic)
		}
		if got := validFilter(tc.s); got != tc.filter {
			t.Errorf("validFilter(%.20q) = %v, want %v", tc.s, got, tc.filter)
		}
	}
}

func TestCovers(t *testing.T) {
	for _, tc := range []struct {
		filter, sub string
		want        bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true}, // '#' includes the parent level
		{"a/#", "a/b/c", true},
		{"a/+/#", "a/b", true},
		{"+/#", "a", true},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		// Filters as subjects (subscribe ACL).
		{"spark/#", "spark/#", true},
		{"spark/#", "spark/+/var/+", true},
		{"spark/+/var/+", "spark/+/var/+", true},
		{"spark/+/var/+", "spark/#", false},
		{"spark/+/var/+", "spark/+/var/+/get", false},
		{"spark/x/#", "spark/+/var", false},
		{"#", "#", true},
		{"spark/#", "#", false},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
	} {
		if got := covers(tc.filter, tc.sub); got != tc.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tc.filter, tc.sub, got, tc.want)
		}
	}
}

// FuzzCovers checks covers against a plain level-by-level matcher for topic
// names, and that every valid filter covers itself.
func FuzzCovers(f *testing.F) {
	for _, s := range [][2]string{{"a/#", "a"}, {"a/+/b", "a/x/b"}, {"+/#", "$SYS/a"}, {"#", "a//b"}, {"a/+", "a/b/c"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if !validFilter(filter) {
			return
		}
		if !covers(filter, filter) {
			t.Fatalf("%q does not cover itself", filter)
		}
		if !validTopic(topic) {
			return
		}
		if got, want := covers(filter, topic), refMatch(filter, topic); got != want {
			t.Fatalf("covers(%q, %q) = %v, reference %v", filter, topic, got, want)
		}
	})
}

// refMatch is MQTT topic matching written the obvious way ([MQTT-4.7]).
func refMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// TestPublishSize compares publishSize with the size of the PUBLISH that
// mochi encodes for an MQTT 5 client.
func TestPublishSize(t *testing.T) {
	for _, tc := range []struct {
		topic   string
		payload int
		qos     byte
		resp    string
		corr    int
	}{
		{"a", 0, 0, "", 0},
		{"spark/heater/var/temp", 100, 1, "", 0},
		{"t", 127 - 4, 0, "", 0},
		{"t", 128, 1, "", 0},
		{"spark/x/fn/y/result", 16380, 1, "reply/topic", 16},
		{"big", 2 << 20, 1, "r", 200},
	} {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: tc.qos},
			TopicName:       tc.topic,
			Payload:         make([]byte, tc.payload),
			PacketID:        uint16(tc.qos),
			ProtocolVersion: 5,
			Properties:      packets.Properties{ResponseTopic: tc.resp, CorrelationData: make([]byte, tc.corr)},
			Mods:            packets.Mods{AllowResponseInfo: true},
		}
		var buf bytes.Buffer
		if err := pk.PublishEncode(&buf); err != nil {
			t.Fatal(err)
		}
		if got := publishSize(tc.topic, tc.payload, tc.qos, tc.resp, tc.corr); got != buf.Len() {
			t.Errorf("publishSize(%q, %d, q%d, %q, %d) = %d, encoded %d", tc.topic, tc.payload, tc.qos, tc.resp, tc.corr, got, buf.Len())
		}
	}
}

// TestPublishLimit checks the boundary: a PUBLISH of exactly MaxPacketSize
// bytes goes, one byte more is ErrTooLarge.
func TestPublishLimit(t *testing.T) {
	cfg := testConfig()
	cfg.MaxPacketSize = 4096
	b := startBroker(t, cfg)
	c := b.NewClient()
	t.Cleanup(func() { _ = c.Close(ctxT(t)) })
	topic := "spark/x/var/blob"
	fits := 4096 - publishSize(topic, 0, 1, "", 0)
	for publishSize(topic, fits, 1, "", 0) > 4096 {
		fits-- // the remaining length took another byte
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: topic, Payload: make([]byte, fits), QoS: 1}); err != nil {
		t.Errorf("publish of exactly the maximum: %v", err)
	}
	err := c.Publish(ctxT(t), broker.Message{Topic: topic, Payload: make([]byte, fits+1), QoS: 1})
	if !errors.Is(err, broker.ErrTooLarge) {
		t.Errorf("one byte over: got %v, want ErrTooLarge", err)
	}
	err = c.Publish(ctxT(t), broker.Message{Topic: topic, QoS: 3})
	if !errors.Is(err, ErrInvalidQoS) {
		t.Errorf("QoS 3: got %v, want ErrInvalidQoS", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Publish(ctx, broker.Message{Topic: topic, QoS: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v", err)
	}

	// A network client sending more is disconnected and delivers nothing.
	raw, ack := dialRaw(t, b.Addr().String(), 4, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "big", Clean: true}})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	col := &collector{}
	if _, err := c.Subscribe(ctxT(t), "spark/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	raw.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: topic, Payload: make([]byte, 8000)})
	if pk := raw.Read(); pk.FixedHeader.Type != 0 && pk.FixedHeader.Type != packets.Disconnect {
		t.Errorf("after an oversize packet got packet type %d, want the connection closed", pk.FixedHeader.Type)
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: "spark/marker", Payload: []byte("m")}); err != nil {
		t.Fatal(err)
	}
	if got := col.wait(t, 1); len(got) != 1 || got[0].Topic != "spark/marker" {
		t.Errorf("got %v, want only the marker", got)
	}
}
