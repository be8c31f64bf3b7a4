package embedded

import (
	"bytes"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/internal/mqttraw"
)

// rawClient speaks MQTT 5, which paho v1 cannot, and misbehaves on purpose.
type rawClient = mqttraw.Client

func dialRaw(t testing.TB, addr string, version byte, connect packets.Packet) (*rawClient, packets.Packet) {
	t.Helper()
	return mqttraw.Dial(t, addr, version, connect)
}

// TestMQTT5RequestResponse carries response topic and correlation data
// between the inline client and a network MQTT 5 client, both ways.
func TestMQTT5RequestResponse(t *testing.T) {
	b := startBroker(t, testConfig())
	inline := b.NewClient()
	t.Cleanup(func() { _ = inline.Close(ctxT(t)) })

	c, ack := dialRaw(t, b.Addr().String(), 5, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "v5", Clean: true}})
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: %+v", ack)
	}
	if got := ack.Properties.MaximumPacketSize; got != uint32(b.MaxPacketSize()) {
		t.Errorf("CONNACK maximum packet size %d, want %d", got, b.MaxPacketSize())
	}
	c.Subscribe("spark/dev/fn/+/result", 1)

	// Inline → network.
	err := inline.Publish(ctxT(t), broker.Message{
		Topic: "spark/dev/fn/heater/result", Payload: []byte(`{"return_value":1}`), QoS: 1,
		ResponseTopic: "reply/here", CorrelationData: []byte{0xca, 0xfe},
	})
	if err != nil {
		t.Fatal(err)
	}
	pk := c.ReadType(packets.Publish)
	if pk.Properties.ResponseTopic != "reply/here" || !bytes.Equal(pk.Properties.CorrelationData, []byte{0xca, 0xfe}) {
		t.Errorf("network client got response topic %q, correlation %x", pk.Properties.ResponseTopic, pk.Properties.CorrelationData)
	}

	// Network → inline.
	col := &collector{}
	if _, err := inline.Subscribe(ctxT(t), "spark/+/fn/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	c.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    9,
		TopicName:   "spark/dev/fn/heater/call",
		Payload:     []byte(`{"arg":"on"}`),
		Properties:  packets.Properties{ResponseTopic: "app/replies", CorrelationData: []byte("req-42")},
	})
	if ack := c.ReadType(packets.Puback); ack.PacketID != 9 || ack.ReasonCode != 0 {
		t.Errorf("PUBACK id %d code %#x, want 9, 0", ack.PacketID, ack.ReasonCode)
	}
	got := col.wait(t, 1)[0]
	if got.ResponseTopic != "app/replies" || string(got.CorrelationData) != "req-42" || got.QoS != 1 {
		t.Errorf("inline handler got %+v", got)
	}
}
