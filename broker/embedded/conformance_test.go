package embedded

import (
	"testing"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/broker/brokertest"
)

// TestConformanceInline runs the suite with both Client and Observer
// in-process: two independent inline Clients of one broker.
func TestConformanceInline(t *testing.T) {
	brokertest.Run(t, func(t *testing.T) *brokertest.Harness {
		b := startBroker(t, testConfig())
		c := b.NewClient()
		return &brokertest.Harness{
			Client:   c,
			Observer: b.NewClient(),
			ConnectWithWill: func(t *testing.T, will broker.Message) (func(), func()) {
				return connectWithWill(t, tcpURL(b), will)
			},
			MaxPacketSize: b.MaxPacketSize(),
			QueueSize:     b.QueueSize(),
			Dropped:       c.Dropped,
			MQTT5:         true,
		}
	})
}

// TestConformanceNetwork runs the suite with an MQTT 3.1.1 network client
// (paho over loopback TCP) as the Observer, so every message crosses the
// broker between the inline client and a real connection.
func TestConformanceNetwork(t *testing.T) {
	brokertest.Run(t, func(t *testing.T) *brokertest.Harness {
		b := startBroker(t, testConfig())
		c := b.NewClient()
		return &brokertest.Harness{
			Client:   c,
			Observer: newPahoClient(t, tcpURL(b), "observer"),
			ConnectWithWill: func(t *testing.T, will broker.Message) (func(), func()) {
				return connectWithWill(t, tcpURL(b), will)
			},
			MaxPacketSize: b.MaxPacketSize(),
			QueueSize:     b.QueueSize(),
			Dropped:       c.Dropped,
		}
	})
}
