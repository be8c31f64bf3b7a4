// Package mqttraw is a minimal MQTT client for tests and benchmarks, built
// on mochi's packet codec: one connection, no goroutines and no queues of
// its own, so it can speak MQTT 5 (which paho v1 cannot), send packets a
// well-behaved client never would, stop reading on purpose, and measure a
// broker without a client library's hand-offs in the figures.
package mqttraw

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// DefaultTimeout bounds each write and each read of a Client.
const DefaultTimeout = 30 * time.Second

// Client is one MQTT connection. Its methods fail the test on an error; a
// Client is used by one goroutine at a time.
type Client struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	v       byte
	buf     bytes.Buffer
	Timeout time.Duration // per write and per read; DefaultTimeout from Dial
}

// Dial connects to addr, sends connect (type, protocol name and version
// filled in from version: 3, 4 or 5; keepalive 60 s unless set) and
// returns the client with the broker's answer. The test's cleanup closes
// the connection.
func Dial(t testing.TB, addr string, version byte, connect packets.Packet) (*Client, packets.Packet) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &Client{t: t, conn: conn, r: bufio.NewReader(conn), v: version, Timeout: DefaultTimeout}
	connect.FixedHeader.Type = packets.Connect
	connect.ProtocolVersion = version
	connect.Connect.ProtocolName = []byte("MQTT")
	if version == 3 {
		connect.Connect.ProtocolName = []byte("MQIsdp")
	}
	if connect.Connect.Keepalive == 0 {
		connect.Connect.Keepalive = 60
	}
	c.Send(connect)
	return c, c.Read()
}

// Conn is the client's connection, for writing raw bytes or deadlines.
func (c *Client) Conn() net.Conn { return c.conn }

// Send encodes pk in the client's protocol version and writes it.
func (c *Client) Send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.v
	pk.Mods.AllowResponseInfo = true // else mochi's encoder leaves out the response topic
	c.buf.Reset()
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&c.buf)
	case packets.Publish:
		err = pk.PublishEncode(&c.buf)
	case packets.Puback:
		err = pk.PubackEncode(&c.buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&c.buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&c.buf)
	default:
		err = fmt.Errorf("mqttraw: cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.Timeout))
	if _, err := c.conn.Write(c.buf.Bytes()); err != nil {
		c.t.Fatalf("mqttraw: write: %v", err)
	}
}

// Read reads one packet. It returns a zero packet (Type 0) once the broker
// has closed the connection.
func (c *Client) Read() packets.Packet {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(c.Timeout))
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

// ReadType reads until a packet of type typ, acknowledging QoS 1 publishes
// on the way.
func (c *Client) ReadType(typ byte) packets.Packet {
	c.t.Helper()
	for {
		pk := c.Read()
		if pk.FixedHeader.Type == 0 {
			c.t.Fatalf("mqttraw: connection closed while waiting for packet type %d", typ)
		}
		if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1 {
			c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		}
		if pk.FixedHeader.Type == typ {
			return pk
		}
	}
}

// Subscribe subscribes to filter at qos and returns the SUBACK.
func (c *Client) Subscribe(filter string, qos byte) packets.Packet {
	c.t.Helper()
	c.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    7,
		Filters:     packets.Subscriptions{{Filter: filter, Qos: qos}},
	})
	return c.ReadType(packets.Suback)
}
