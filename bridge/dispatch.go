package bridge

import (
	"bytes"
	"context"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// inbound is one MQTT message taken by a handler, copied.
type inbound struct {
	route    route
	d, name  string // device level, function/variable/event name
	payload  []byte
	retained bool
	resp     string // MQTT 5 response topic
	corr     []byte // MQTT 5 correlation data
	at       time.Time
}

// routeSync marks the start marker (restore.go).
const routeSync route = 255

// onMessage is the handler of every subscription. It classifies the topic,
// copies the message and queues it for the dispatcher; it never blocks
// (a full queue drops the message, counted and logged).
func (b *Bridge) onMessage(m broker.Message) {
	var in inbound
	if m.Topic == b.syncTopic {
		in.route = routeSync
	} else {
		in.route, in.d, in.name = b.t.parse(m.Topic)
		if in.route == routeNone {
			b.stats.invalid.Add(1)
			b.lim.warn(b.log, "topic", "ignoring message on an unknown topic", "topic", m.Topic)
			return
		}
	}
	in.payload = bytes.Clone(m.Payload)
	in.retained = m.Retain
	in.resp = m.ResponseTopic
	in.corr = bytes.Clone(m.CorrelationData)
	in.at = b.now()
	select {
	case b.in <- in:
	default:
		b.stats.dropped.Add(1)
		b.lim.warn(b.log, "inbound-full", "inbound queue full: message dropped", "topic", m.Topic, "queue", cap(b.in))
	}
}

// dispatch is the goroutine that handles inbound messages in order. It owns
// the restore state until the start marker arrives. On stop it drains the
// queue and returns.
func (b *Bridge) dispatch(ctx context.Context, stop <-chan struct{}) {
	r := &restorer{}
	syncTimer := time.NewTimer(b.cfg.SyncTimeout)
	defer syncTimer.Stop()
	syncC := syncTimer.C
	for {
		select {
		case in := <-b.in:
			b.handle(ctx, r, in)
		case <-syncC:
			syncC = nil
			if !b.isSynced() {
				b.log.Warn("start marker not seen: restoring what arrived", "took", b.cfg.SyncTimeout)
				b.finishSync(ctx, r)
			}
		case <-stop:
			for {
				select {
				case in := <-b.in:
					b.handle(ctx, r, in)
				default:
					if !b.isSynced() {
						b.finishSync(ctx, r)
					}
					return
				}
			}
		}
	}
}

// handle routes one inbound message.
func (b *Bridge) handle(ctx context.Context, r *restorer, in inbound) {
	switch in.route {
	case routeSync:
		if !b.isSynced() {
			b.finishSync(ctx, r)
		}
		return
	case routeInventory, routeAvailability, routePending:
		if !in.retained || len(in.payload) == 0 {
			return
		}
		b.restoreMessage(ctx, r, in)
		return
	}
	if in.retained {
		// A retained command would run again on every restart.
		b.stats.invalid.Add(1)
		b.lim.warn(b.log, "retained:"+in.route.String(), "ignoring a retained command: publish commands without retain",
			"device", in.d, "fn", in.name)
		return
	}
	switch in.route {
	case routeCall:
		b.stats.callsReceived.Add(1)
		b.acceptCall(ctx, in, &call{fn: in.name, arg: string(in.payload), ttl: b.cfg.QueueTTL})
	case routeCallJSON:
		b.stats.callsReceived.Add(1)
		c, err := b.parseCallRequest(in.payload)
		c.fn = in.name
		if err != nil {
			b.reject(ctx, in, c, "invalid request: "+err.Error())
			return
		}
		b.acceptCall(ctx, in, c)
	case routeGet:
		b.stats.gets.Add(1)
		b.acceptGet(ctx, in)
	case routeSignal:
		b.acceptSignal(in)
	case routeRemove:
		b.acceptRemove(ctx, in)
	case routeEvent:
		b.stats.eventsFromMQTT.Add(1)
		b.enqueueEvent(eventItem{e: mqttEvent(in.name, in.payload)})
	}
}

// lookup resolves the topic level D (a configured name or a device id, any
// case) to a known device, creating its state when it is known but has
// none yet. It returns nil for an unknown device.
func (b *Bridge) lookup(level string) *dev {
	id, ok := b.cfg.Devices.ID(level)
	if !ok {
		var err error
		if id, err = parseID(level); err != nil {
			return nil
		}
	}
	b.mu.Lock()
	d := b.devs[id]
	b.mu.Unlock()
	if d != nil {
		return d
	}
	if b.cfg.Known == nil || !b.cfg.Known(id) {
		return nil
	}
	return b.ensureDev(id)
}

// ensureDev returns the state of device id, creating it.
func (b *Bridge) ensureDev(id string) *dev {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.devs[id]
	if d == nil {
		d = newDev(id, b.topicFor(id))
		b.devs[id] = d
	}
	return d
}

// acceptSignal queues a signal for an online device: the newest wins.
func (b *Bridge) acceptSignal(in inbound) {
	var on bool
	switch strings.ToLower(strings.TrimSpace(string(in.payload))) {
	case "on", "1", "true":
		on = true
	case "off", "0", "false":
	default:
		b.stats.invalid.Add(1)
		b.lim.warn(b.log, "signal-payload", "signal: want on or off", "device", in.d)
		return
	}
	d := b.lookup(in.d)
	if d == nil {
		b.stats.invalid.Add(1)
		b.lim.warn(b.log, "signal-unknown", "signal: unknown device", "device", in.d)
		return
	}
	d.mu.Lock()
	s := d.sess
	if s != nil {
		s.signal = -1
		if on {
			s.signal = 1
		}
	}
	d.mu.Unlock()
	if s == nil {
		b.lim.warn(b.log, "signal-offline", "signal: device offline", "device", d.id)
		return
	}
	s.kick()
}
