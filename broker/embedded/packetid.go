package embedded

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// packetIDs works around two mochi (v2.7.9) gaps. The first: its CONNACK
// does not tell MQTT 5 clients the maximum packet size it enforces, so
// this hook adds it (a client that knows can refuse a large publish itself
// instead of being disconnected for it).
//
// The second is a bug: it keeps the packet
// identifiers a client chose and those the server chose in one in-flight
// map, although MQTT gives each side its own ([MQTT-2.2.1-3] binds a sender
// to its own unused identifiers only). So when a client sends SUBSCRIBE or
// UNSUBSCRIBE with an identifier that happens to equal one of the server's
// QoS 1 messages still in flight to it, mochi answers "identifier in use"
// (a silent 0x80 failure for MQTT 3.1.1 clients, whose libraries seldom
// check), and an inbound QoS 1 PUBLISH with such an identifier deletes the
// server's in-flight record. Clients number from 1 as mochi does, so this
// happens whenever a client subscribes while retained messages flow to it
// (Home Assistant at start-up, the conformance suite).
//
// The hook gives each such inbound packet an identifier from the top of the
// range, which mochi's counter (counting up from 1) practically never holds,
// and restores the client's identifier on the acknowledgement. Each of these
// packets is acknowledged by mochi on the client's read goroutine before it
// reads the next one, so one pending mapping per client suffices. Inbound
// QoS 2 flows span several packets and are left alone.
type packetIDs struct {
	mqtt.HookBase
	maxPacketSize uint32 // immutable

	// Guarded by mu.
	mu      sync.Mutex
	pending map[*mqtt.Client]idMap
}

type idMap struct {
	ours, theirs uint16
	ack          byte // the packet type that carries ours back
}

func newPacketIDs(maxPacketSize int) *packetIDs {
	return &packetIDs{maxPacketSize: uint32(maxPacketSize), pending: map[*mqtt.Client]idMap{}}
}

// ID implements mqtt.Hook.
func (h *packetIDs) ID() string { return "spark2mqtt-packet-ids" }

// Provides implements mqtt.Hook.
func (h *packetIDs) Provides(b byte) bool {
	return b == mqtt.OnPacketRead || b == mqtt.OnPacketEncode || b == mqtt.OnDisconnect
}

// OnPacketRead implements mqtt.Hook.
func (h *packetIDs) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	var ack byte
	switch {
	case pk.FixedHeader.Type == packets.Subscribe:
		ack = packets.Suback
	case pk.FixedHeader.Type == packets.Unsubscribe:
		ack = packets.Unsuback
	case pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1:
		ack = packets.Puback
	default:
		return pk, nil
	}
	ours, ok := freeID(cl)
	if !ok {
		return pk, nil // every identifier in flight: let mochi decide
	}
	h.mu.Lock()
	h.pending[cl] = idMap{ours: ours, theirs: pk.PacketID, ack: ack}
	h.mu.Unlock()
	pk.PacketID = ours
	return pk, nil
}

// OnPacketEncode implements mqtt.Hook.
func (h *packetIDs) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Suback, packets.Unsuback, packets.Puback:
	case packets.Connack:
		if pk.ReasonCode < packets.ErrUnspecifiedError.Code {
			pk.Properties.MaximumPacketSize = h.maxPacketSize // [MQTT-3.2.2.3.6]; encoded for MQTT 5 only
		}
		return pk
	default:
		return pk
	}
	h.mu.Lock()
	m, ok := h.pending[cl]
	if ok && m.ack == pk.FixedHeader.Type && m.ours == pk.PacketID {
		delete(h.pending, cl)
		pk.PacketID = m.theirs
	}
	h.mu.Unlock()
	return pk
}

// OnDisconnect implements mqtt.Hook.
func (h *packetIDs) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	delete(h.pending, cl)
	h.mu.Unlock()
}

// freeID returns an identifier not in cl's in-flight map, from the top.
func freeID(cl *mqtt.Client) (uint16, bool) {
	for id := uint16(65535); id > 0; id-- {
		if _, used := cl.State.Inflight.Get(id); !used {
			return id, true
		}
	}
	return 0, false
}
