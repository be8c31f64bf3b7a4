package bridge

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
)

// Republish publishes the bridge's retained state again: bridge/state
// online, the inventory, every known device's availability, the cached
// variable values and the held calls; with Config.Discovery it also asks
// for every Home Assistant discovery config to be published again. cmd
// calls it from the external
// broker client's OnConnect, so a broker that lost its retained messages
// (restarted without persistence) gets them back. It blocks until done or
// ctx ends and returns the first publish error. Before Run is ready, and
// after it has stopped, it does nothing: Run publishes its state itself.
func (b *Bridge) Republish(ctx context.Context) error {
	select {
	case <-b.ready:
	default:
		return nil
	}
	b.mu.Lock()
	running := b.state == stateRunning
	devs := slices.Collect(maps.Values(b.devs))
	b.mu.Unlock()
	if !running {
		return nil
	}
	slices.SortFunc(devs, func(x, y *dev) int { return cmp.Compare(x.id, y.id) })
	var errs []error
	keep := func(err error) {
		if err != nil && len(errs) == 0 {
			errs = append(errs, err)
		}
	}
	keep(b.publish(ctx, b.t.state(), []byte("online"), true))
	for _, d := range devs {
		if ctx.Err() != nil {
			break
		}
		keep(b.republishDev(ctx, d))
	}
	b.publishInventory(ctx)
	b.reannounceNow()
	return errors.Join(errs...)
}

// republishDev republishes one device's retained state, under its pubMu so
// that it cannot overtake a newer state change.
func (b *Bridge) republishDev(ctx context.Context, d *dev) error {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	d.mu.Lock()
	listed, online := d.listed, d.sess != nil
	seen := d.last != nil || !d.lastSeen.IsZero()
	type kv struct{ name, text string }
	var vals []kv
	for name, vs := range d.vars {
		if vs.has {
			vals = append(vals, kv{name, vs.text})
		}
	}
	d.mu.Unlock()
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	if listed && (online || seen) {
		state := "offline"
		if online {
			state = "online"
		}
		keep(b.publish(ctx, b.t.availability(d.topic), []byte(state), true))
	}
	slices.SortFunc(vals, func(x, y kv) int { return cmp.Compare(x.name, y.name) })
	for _, v := range vals {
		keep(b.publish(ctx, b.t.variable(d.topic, v.name), []byte(v.text), true))
	}
	held := slices.Collect(maps.Values(d.pendingOwner))
	slices.SortFunc(held, func(x, y *call) int { return cmp.Compare(x.seq, y.seq) })
	for _, c := range held {
		keep(b.publish(ctx, b.t.pending(d.topic, c.fn), c.pending(d.id, nil), true))
	}
	return first
}
