package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Restoring at start (Run → start, dispatcher → finishSync).
//
// The bridge keeps no files: its durable state is the broker's retained
// messages. At start it subscribes to spark/bridge/devices (the last
// inventory: which devices exist, their last description and hello),
// spark/+/availability (to correct a stale "online" left by a crash) and
// spark/+/fn/+/pending (the held calls). It then publishes a non-retained
// marker on its own pending topic (spark/bridge/fn/sync-<nonce>/pending):
// the broker delivers the retained messages of a subscription before
// anything published after it, so when the marker comes back every retained
// pending message has been seen. Only then are the calls queued and the
// command topics subscribed; device workers deliver nothing before that, so
// a device that connects during the start gets its held calls once, in
// order. SyncTimeout bounds the wait if the marker never comes.

// restorer collects the retained state until the marker; dispatcher-owned.
type restorer struct {
	inventory [][]byte
	avail     []restoredAvail
	pending   []restoredPending
}

type restoredAvail struct{ level string }

type restoredPending struct {
	level, fn string
	p         pendingCall
}

// restoreMessage takes one retained message of the start subscriptions.
// Before the marker it is collected; after (a late one) it is applied.
func (b *Bridge) restoreMessage(ctx context.Context, r *restorer, in inbound) {
	synced := b.isSynced()
	switch in.route {
	case routeInventory:
		if synced {
			b.applyInventory(in.payload)
		} else {
			r.inventory = append(r.inventory, in.payload)
		}
	case routeAvailability:
		if string(in.payload) != "online" {
			return
		}
		if synced {
			b.applyAvailability(ctx, in.d)
		} else {
			r.avail = append(r.avail, restoredAvail{in.d})
		}
	case routePending:
		var p pendingCall
		if err := json.Unmarshal(in.payload, &p); err != nil || len(in.payload) > maxRequest {
			b.stats.invalid.Add(1)
			b.lim.warn(b.log, "restore-pending", "ignoring an unreadable retained pending call", "device", in.d, "fn", in.name)
			return
		}
		rp := restoredPending{level: in.d, fn: in.name, p: p}
		if synced {
			b.applyPending(ctx, rp)
		} else {
			r.pending = append(r.pending, rp)
		}
	}
}

// finishSync applies what was collected, then lets the workers deliver and
// the inventory be published.
func (b *Bridge) finishSync(ctx context.Context, r *restorer) {
	for _, p := range r.inventory {
		b.applyInventory(p)
	}
	slices.SortStableFunc(r.pending, func(x, y restoredPending) int { return x.p.QueuedAt.Compare(y.p.QueuedAt) })
	for _, rp := range r.pending {
		b.applyPending(ctx, rp)
	}
	for _, a := range r.avail {
		b.applyAvailability(ctx, a.level)
	}
	*r = restorer{}
	close(b.synced)
	b.mu.Lock()
	for _, d := range b.devs {
		d.mu.Lock()
		if d.sess != nil {
			d.sess.kick()
		}
		d.mu.Unlock()
	}
	b.mu.Unlock()
	b.kickInventory()
}

// resolveLevel turns a topic level into a device id: a configured name, or
// an id.
func (b *Bridge) resolveLevel(level string) (string, bool) {
	if id, ok := b.cfg.Devices.ID(level); ok {
		return id, true
	}
	id, err := parseID(level)
	return id, err == nil
}

// applyInventory merges a retained inventory: devices this process does not
// know yet are listed again with their last description and hello. Nothing
// this process learnt itself is overwritten.
func (b *Bridge) applyInventory(p []byte) {
	var list []InventoryDevice
	if err := json.Unmarshal(p, &list); err != nil {
		b.lim.warn(b.log, "restore-inventory", "ignoring an unreadable retained inventory", "err", err)
		return
	}
	changed := false
	for _, e := range list {
		id, err := parseID(e.ID)
		if err != nil {
			continue
		}
		d := b.ensureDev(id)
		d.mu.Lock()
		if !d.listed {
			d.listed, changed = true, true
		}
		if d.last == nil {
			if d.lastSeen.IsZero() && e.LastSeen != nil {
				d.lastSeen = *e.LastSeen
			}
			if d.info == (DeviceInfo{}) && e.ProductID != nil {
				d.info.Kind = e.Kind
				d.info.ProductID = *e.ProductID
				if e.ProductVersion != nil {
					d.info.ProductVersion = *e.ProductVersion
				}
				if e.PlatformID != nil {
					d.info.PlatformID, d.info.HasPlatform = *e.PlatformID, true
				}
			}
			if d.desc == nil && e.Functions != nil {
				desc := restoredDesc(e)
				d.desc = &desc
			}
		}
		d.mu.Unlock()
	}
	if changed {
		b.kickInventory()
	}
}

// applyAvailability corrects a retained "online" of a device that is not
// online here (left by a crash, or by a device that moved away).
func (b *Bridge) applyAvailability(ctx context.Context, level string) {
	id, ok := b.resolveLevel(level)
	if !ok {
		// A name no longer configured: the retained "online" is stale.
		_ = b.publish(ctx, b.t.availability(level), []byte("offline"), true)
		return
	}
	d := b.ensureDev(id)
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	d.mu.Lock()
	online := d.sess != nil
	d.listed = true
	d.mu.Unlock()
	if !online {
		_ = b.publish(ctx, b.t.availability(level), []byte("offline"), true)
	}
}

// applyPending queues one retained held call again. A call the last run
// was delivering when it died is reported as interrupted, not run again
// (at most once); an expired one gets its expired result. A pending message
// under an old name moves to the device's current topic.
func (b *Bridge) applyPending(ctx context.Context, rp restoredPending) {
	id, ok := "", false
	if rp.p.Device != "" {
		if x, err := parseID(rp.p.Device); err == nil {
			id, ok = x, true
		}
	}
	if !ok {
		id, ok = b.resolveLevel(rp.level)
	}
	if !ok || len(rp.fn) > maxFnName || len(rp.p.Arg) > hardMaxArg || rp.p.QueuedAt.IsZero() {
		b.stats.invalid.Add(1)
		b.lim.warn(b.log, "restore-pending", "ignoring a retained pending call for an unknown device", "device", rp.level, "fn", rp.fn)
		return
	}
	c := &call{
		fn: rp.fn, arg: rp.p.Arg, tx: rp.p.Transaction, queuedAt: rp.p.QueuedAt, expiresAt: rp.p.ExpiresAt,
		resp: rp.p.ResponseTopic, corr: rp.p.CorrelationData, held: true,
	}
	if len(c.tx) > 0 {
		var buf bytes.Buffer
		if json.Compact(&buf, c.tx) != nil {
			c.tx = nil
		} else {
			c.tx = buf.Bytes()
		}
	}
	if strings.ContainsAny(c.resp, "+#") {
		c.resp = ""
	}
	d := b.ensureDev(id)
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	moved := rp.level != d.topic
	clearOld := func() {
		_ = b.publish(ctx, b.t.pending(rp.level, rp.fn), nil, true)
	}
	switch {
	case rp.p.DeliveringAt != nil:
		b.stats.callsError.Add(1)
		b.log.Warn("held call was being delivered when the bridge stopped: not run again", "device", id, "fn", c.fn)
		b.publishResult(ctx, d.topic, c, result{Error: errInterrupted}, true)
		clearOld()
		return
	case !b.now().Before(c.expiresAt):
		b.stats.callsExpired.Add(1)
		b.publishResult(ctx, d.topic, c, result{Error: errExpired}, true)
		clearOld()
		return
	}
	d.mu.Lock()
	old := d.calls[c.fn]
	if old != nil && old.queuedAt.After(c.queuedAt) {
		d.mu.Unlock()
		b.stats.callsSuperseded.Add(1)
		b.publishResult(ctx, d.topic, c, result{Error: errSuperseded}, false)
		if moved {
			clearOld()
		}
		return
	}
	c.seq = b.seq.Add(1)
	d.calls[c.fn] = c
	d.listed = true
	s := d.sess
	d.mu.Unlock()
	b.stats.restored.Add(1)
	if old != nil {
		b.stats.callsSuperseded.Add(1)
		b.publishResult(ctx, d.topic, old, result{Error: errSuperseded}, false)
	}
	if moved {
		clearOld()
		_ = b.publish(ctx, b.t.pending(d.topic, c.fn), c.pending(d.id, nil), true)
	}
	d.pendingOwner[c.fn] = c
	if s != nil {
		s.kick()
	}
	b.log.Debug("held call restored", "device", id, "fn", c.fn, "expires", c.expiresAt.Sub(b.now()).Round(time.Second))
}

// restoredDesc rebuilds a description from an inventory entry.
func restoredDesc(e InventoryDevice) (d msg.Description) {
	d.Functions = slices.Clone(e.Functions)
	d.Variables = map[string]msg.VarType{}
	for n, ts := range e.Variables {
		if t, ok := varTypeOf(ts); ok {
			d.Variables[n] = t
		}
	}
	return d
}
