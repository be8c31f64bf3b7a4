package bridge

import (
	"context"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
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
			b.handleEvents(ctx, it)
		case <-stop:
			for {
				select {
				case it := <-b.events:
					b.handleEvents(ctx, it)
				default:
					return
				}
			}
		}
	}
}

// eventBatch bounds the queued events that share one PublishTimeout.
const eventBatch = 64

// handleEvents handles it and the events queued behind it, up to
// eventBatch in all, their publishes bounded by one PublishTimeout: under
// load, a context with its timer for each event would cost as much as the
// rest of the event's handling; and when the broker stalls, the batch's
// later publishes fail at once instead of waiting a PublishTimeout each.
func (b *Bridge) handleEvents(ctx context.Context, it eventItem) {
	pctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()
	b.handleEvent(ctx, pctx, it)
	for range eventBatch - 1 {
		select {
		case it = <-b.events:
			b.handleEvent(ctx, pctx, it)
		default:
			return
		}
	}
}

// handleEvent publishes one event (under pctx) and delivers it to the
// devices subscribed to it (under ctx, sendTimeout each).
func (b *Bridge) handleEvent(ctx, pctx context.Context, it eventItem) {
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
	b.mu.Lock()
	d := b.devs[it.from]
	b.mu.Unlock()
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
		m := broker.Message{Topic: b.t.event(d.topic, e.Name), Payload: e.Data, QoS: 1}
		if b.publishWithin(pctx, m) == nil {
			b.stats.eventsOut.Add(1)
		}
	}
	if !system {
		b.deliver(ctx, it.from, e)
	}
}

// deliver sends e to every online device subscribed to it, except the one
// it came from (as the original cloud did). Called by the event loop only.
func (b *Bridge) deliver(ctx context.Context, from string, e msg.Event) {
	b.targets = b.subs.match(e.Name, from, b.targets[:0])
	for i, t := range b.targets {
		b.targets[i] = subTarget{} // the loop keeps no session alive
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
