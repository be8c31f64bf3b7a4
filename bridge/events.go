package bridge

import (
	"context"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// sendTimeout bounds the delivery of one event to one device.
const sendTimeout = time.Second

// maxEventData bounds the data of an event from MQTT (spark-protocol.md
// §4.4: 622 bytes on newer Photons, 63 on the Core; the device session
// enforces its own limit).
const maxEventData = 622

// eventItem is one event for the event loop: from a device (from is its
// id) or from spark/events/... (from is empty).
type eventItem struct {
	from string
	src  Device
	e    msg.Event
}

func mqttEvent(name string, data []byte) msg.Event {
	return msg.Event{Name: name, Data: data, TTL: msg.DefaultTTL}
}

// enqueueEvent queues an event without blocking: when the queue is full
// the oldest event is dropped and counted (STYLE.md §3.5).
func (b *Bridge) enqueueEvent(it eventItem) {
	for {
		select {
		case b.events <- it:
			return
		default:
		}
		select {
		case <-b.events:
			b.stats.eventsDropped.Add(1)
			b.lim.warn(b.log, "events-full", "event queue full: oldest event dropped", "queue", cap(b.events))
		default:
		}
	}
}

// eventLoop publishes device events and delivers events to the devices
// subscribed to them, in order. On stop it drains its queue.
func (b *Bridge) eventLoop(ctx context.Context, stop <-chan struct{}) {
	for {
		select {
		case it := <-b.events:
			b.handleEvent(ctx, it)
		case <-stop:
			for {
				select {
				case it := <-b.events:
					b.handleEvent(ctx, it)
				default:
					return
				}
			}
		}
	}
}

func (b *Bridge) handleEvent(ctx context.Context, it eventItem) {
	e := it.e
	if it.from == "" {
		if len(e.Data) > maxEventData || len(e.Name) > msg.MaxEventName {
			b.stats.eventsDropped.Add(1)
			b.lim.warn(b.log, "event-size", "event from MQTT too large: dropped", "event", e.Name)
			return
		}
		b.deliver(ctx, "", e)
		return
	}
	b.stats.eventsIn.Add(1)
	d := b.lookupQuiet(it.from)
	if d == nil {
		return
	}
	system := isSystemEvent(e.Name)
	switch {
	case system && !b.cfg.SystemEvents:
		b.stats.eventsSystem.Add(1)
	case validEventName(e.Name) != nil:
		b.stats.eventsDropped.Add(1)
		b.lim.warn(b.log, "event-name:"+d.id, "event name is not a valid topic: dropped", "device", d.id, "event", e.Name)
	default:
		if b.publish(ctx, b.t.event(d.topic, e.Name), e.Data, false) == nil {
			b.stats.eventsOut.Add(1)
		}
	}
	if !system {
		b.deliver(ctx, it.from, e)
	}
}

// deliver sends e to every online device subscribed to it, except the one
// it came from (as the original cloud did).
func (b *Bridge) deliver(ctx context.Context, from string, e msg.Event) {
	for _, t := range b.onlineDevices() {
		if t.id == from || !t.d.Subscribed(e.Name) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, sendTimeout)
		err := t.d.Send(sctx, e)
		cancel()
		if err != nil {
			b.stats.eventsDropped.Add(1)
			b.lim.warn(b.log, "send:"+t.id, "event delivery to device failed", "device", t.id, "event", e.Name, "err", err)
			continue
		}
		b.stats.eventsToDevices.Add(1)
	}
}

// onlineDev is an entry of the online snapshot.
type onlineDev struct {
	id string
	d  Device
}

// onlineDevices returns the sessions online now. The snapshot is rebuilt
// only after a session started or ended (onlineDirty), so an event costs
// one pass over the online devices, not over every known one. Called by the
// event loop only.
func (b *Bridge) onlineDevices() []onlineDev {
	if !b.onlineDirty.Swap(false) {
		return b.onlineSnap
	}
	b.mu.Lock()
	snap := b.onlineSnap[:0:0]
	for id, d := range b.devs {
		d.mu.Lock()
		if d.sess != nil {
			snap = append(snap, onlineDev{id: id, d: d.sess.d})
		}
		d.mu.Unlock()
	}
	b.mu.Unlock()
	b.onlineSnap = snap
	return snap
}
