package embedded

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// rawClient is a minimal MQTT client over a net.Conn built on mochi's packet
// codec: enough to speak MQTT 5, which paho v1 cannot.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	v    byte
}

func dialRaw(t testing.TB, addr string, version byte, connect packets.Packet) (*rawClient, packets.Packet) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), v: version}
	connect.FixedHeader.Type = packets.Connect
	connect.ProtocolVersion = version
	connect.Connect.ProtocolName = []byte("MQTT")
	if version == 3 {
		connect.Connect.ProtocolName = []byte("MQIsdp")
	}
	if connect.Connect.Keepalive == 0 {
		connect.Connect.Keepalive = 60
	}
	c.send(connect)
	return c, c.read()
}

func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.v
	pk.Mods.AllowResponseInfo = true // else mochi's encoder leaves out the response topic
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("rawClient cannot send type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		c.t.Fatalf("raw write: %v", err)
	}
}

// read reads one packet. It returns a zero packet (Type 0) once the broker
// has closed the connection.
func (c *rawClient) read() packets.Packet {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(testTimeout))
	hb, err := c.r.ReadByte()
	if err != nil {
		return packets.Packet{}
	}
	var pk packets.Packet
	pk.ProtocolVersion = c.v
	if err := pk.FixedHeader.Decode(hb); err != nil {
		c.t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		c.t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		c.t.Fatal(err)
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return pk
}

// readType reads until a packet of type typ, acknowledging QoS 1 publishes.
func (c *rawClient) readType(typ byte) packets.Packet {
	c.t.Helper()
	for {
		pk := c.read()
		if pk.FixedHeader.Type == 0 {
			c.t.Fatalf("connection closed while waiting for packet type %d", typ)
		}
		if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1 {
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		}
		if pk.FixedHeader.Type == typ {
			return pk
		}
	}
}

func (c *rawClient) subscribe(filter string, qos byte) packets.Packet {
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    7,
		Filters:     packets.Subscriptions{{Filter: filter, Qos: qos}},
	})
	return c.readType(packets.Suback)
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
	c.subscribe("spark/dev/fn/+/result", 1)

	// Inline → network.
	err := inline.Publish(ctxT(t), broker.Message{
		Topic: "spark/dev/fn/heater/result", Payload: []byte(`{"return_value":1}`), QoS: 1,
		ResponseTopic: "reply/here", CorrelationData: []byte{0xca, 0xfe},
	})
	if err != nil {
		t.Fatal(err)
	}
	pk := c.readType(packets.Publish)
	if pk.Properties.ResponseTopic != "reply/here" || !bytes.Equal(pk.Properties.CorrelationData, []byte{0xca, 0xfe}) {
		t.Errorf("network client got response topic %q, correlation %x", pk.Properties.ResponseTopic, pk.Properties.CorrelationData)
	}

	// Network → inline.
	col := &collector{}
	if _, err := inline.Subscribe(ctxT(t), "spark/+/fn/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    9,
		TopicName:   "spark/dev/fn/heater/call",
		Payload:     []byte(`{"arg":"on"}`),
		Properties:  packets.Properties{ResponseTopic: "app/replies", CorrelationData: []byte("req-42")},
	})
	if ack := c.readType(packets.Puback); ack.PacketID != 9 || ack.ReasonCode != 0 {
		t.Errorf("PUBACK id %d code %#x, want 9, 0", ack.PacketID, ack.ReasonCode)
	}
	got := col.wait(t, 1)[0]
	if got.ResponseTopic != "app/replies" || string(got.CorrelationData) != "req-42" || got.QoS != 1 {
		t.Errorf("inline handler got %+v", got)
	}
}
