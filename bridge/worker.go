package bridge

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// runWorker is the goroutine of one device session: the only goroutine
// that sends requests to the device, so at most one request is in flight
// per device. It announces the device, describes it, then serves its
// signal, calls, gets and polls in turn until the session ends or Run
// stops; then it holds the calls still waiting and marks the device
// offline. Started by DeviceOnline or Run, waited for by Run.
func (b *Bridge) runWorker(d *dev, s *session) {
	defer close(s.exited)
	defer s.cancel()
	if s.prev != nil {
		select {
		case <-s.prev.exited:
		case <-s.ctx.Done():
		}
	}
	pubCtx := b.stopCtx
	if b.alive(s) {
		d.pubMu.Lock()
		_ = b.publish(pubCtx, b.t.availability(d.topic), []byte("online"), true)
		d.pubMu.Unlock()
		b.log.Debug("device announced", "device", d.id, "topic", d.topic, "remote", s.info.Remote)
	}
	synced := b.synced
	turn := 0
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	for b.alive(s) {
		worked, next := b.step(d, s, &turn)
		if worked {
			continue
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			idle.Reset(max(next.Sub(b.now()), time.Millisecond))
			timer = idle.C
		}
		select {
		case <-s.wake:
		case <-timer:
		case <-synced:
			synced = nil
		case <-s.ended:
		case <-s.d.Done():
		case <-b.runCtx.Done():
		}
		idle.Stop()
	}
	b.workerExit(pubCtx, d, s)
}

// alive reports whether the worker of s should go on.
func (b *Bridge) alive(s *session) bool {
	select {
	case <-s.ended:
		return false
	case <-s.d.Done():
		return false
	case <-b.runCtx.Done():
		return false
	default:
		return true
	}
}

// workerExit ends a session: if no newer session took over, the device is
// offline, its waiting calls are held and its availability is published.
func (b *Bridge) workerExit(ctx context.Context, d *dev, s *session) {
	d.mu.Lock()
	if d.sess == s {
		d.sess = nil
		d.lastSeen = b.now()
	}
	s.end()
	newer := d.sess != nil
	gets := s.gets
	s.gets = nil
	d.mu.Unlock()
	for name, rs := range gets {
		b.respondVar(ctx, name, rs, "", errOffline)
	}
	if newer {
		return
	}
	b.holdWaiting(ctx, d)
	d.pubMu.Lock()
	d.mu.Lock()
	offline := d.sess == nil
	d.mu.Unlock()
	if offline {
		_ = b.publish(ctx, b.t.availability(d.topic), []byte("offline"), true)
	}
	d.pubMu.Unlock()
	b.kickInventory()
	b.log.Debug("device announced offline", "device", d.id, "topic", d.topic)
}

// Kinds of work a worker rotates through, so a flood of one kind cannot
// starve another.
const (
	workCalls = iota
	workGets
	workPolls
	numWork
)

// step does at most one device request. It returns whether it did one, or
// else when there will be work (zero: when woken).
func (b *Bridge) step(d *dev, s *session, turn *int) (bool, time.Time) {
	now := b.now()
	d.mu.Lock()
	if s.phase == phaseNone {
		d.mu.Unlock()
		b.describe(d, s)
		return true, time.Time{}
	}
	if s.signal != 0 && b.isSynced() {
		on := s.signal > 0
		s.signal = 0
		d.mu.Unlock()
		b.signal(d, s, on)
		return true, time.Time{}
	}
	var next time.Time
	for i := range numWork {
		w := (*turn + i) % numWork
		switch w {
		case workCalls:
			if len(d.calls) == 0 || !b.isSynced() {
				continue
			}
			c := slices.MinFunc(slices.Collect(maps.Values(d.calls)), func(a, b *call) int { return cmp.Compare(a.seq, b.seq) })
			delete(d.calls, c.fn)
			d.mu.Unlock()
			*turn = w + 1
			b.runCall(d, s, c)
			return true, time.Time{}
		case workGets:
			if len(s.gets) == 0 {
				continue
			}
			name := slices.Min(slices.Collect(maps.Keys(s.gets)))
			s.reading = name
			d.mu.Unlock()
			*turn = w + 1
			b.read(d, s, name, true)
			return true, time.Time{}
		case workPolls:
			var due string
			for _, name := range slices.Sorted(maps.Keys(d.vars)) {
				vs := d.vars[name]
				if vs.nextPoll.IsZero() {
					continue
				}
				if !now.Before(vs.nextPoll) {
					due = name
					break
				}
				if next.IsZero() || vs.nextPoll.Before(next) {
					next = vs.nextPoll
				}
			}
			if due == "" {
				continue
			}
			s.reading = due
			d.mu.Unlock()
			*turn = w + 1
			b.stats.polls.Add(1)
			b.read(d, s, due, false)
			return true, time.Time{}
		}
	}
	d.mu.Unlock()
	return false, next
}

// opCtx bounds one device request.
func (b *Bridge) opCtx(s *session) (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, b.cfg.CallTimeout)
}

// describe asks the device for its functions and variables, once per
// session, before any call or read is sent: the Device waits for the
// description of the running application (spark-protocol.md §2.4), so a
// held call is not sent to a device whose setup() has not registered its
// functions yet. Later changes come through DeviceDescribed.
func (b *Bridge) describe(d *dev, s *session) {
	ctx, cancel := b.opCtx(s)
	desc, err := s.d.Describe(ctx)
	cancel()
	b.stats.describes.Add(1)
	if errors.Is(err, ErrGone) {
		s.end()
	}
	if err != nil {
		d.mu.Lock()
		s.phase = phaseBlind
		d.mu.Unlock()
		if b.alive(s) {
			b.lim.warn(b.log, "describe:"+d.id, "describe failed: calls go to the device unchecked", "device", d.id, "err", err)
		}
		return
	}
	b.described(d, s, desc)
}

// DeviceDescribed tells the bridge about a new description of device d's
// application (coapdev's DescribeHandler). It does not block.
func (b *Bridge) DeviceDescribed(dv Device, desc msg.Description) {
	id, err := parseID(dv.ID())
	if err != nil {
		return
	}
	d := b.lookupQuiet(id)
	if d == nil {
		return
	}
	d.mu.Lock()
	s := d.sess
	if s == nil || s.d != dv {
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	b.described(d, s, desc)
}

// described records a description: the inventory, the offline checks and
// the variables polled follow it.
func (b *Bridge) described(d *dev, s *session, desc msg.Description) {
	now := b.now()
	d.mu.Lock()
	s.phase = phaseSettled
	changed := d.desc == nil || !sameDesc(*d.desc, desc)
	dc := cloneDesc(desc)
	d.desc = &dc
	b.syncVarsLocked(d, desc, now)
	d.mu.Unlock()
	s.kick()
	// Every application description (the session's first and the changed
	// ones) rebuilds the discovery config; it is published if it changed.
	b.kickDiscovery(d.id)
	if !changed {
		return
	}
	b.kickInventory()
	for _, f := range desc.Functions {
		if ValidLevel(f) != nil {
			b.log.Warn("function name is not a valid topic level: unreachable over MQTT", "device", d.id, "fn", f)
		}
	}
	for v := range desc.Variables {
		if ValidLevel(v) != nil {
			b.log.Warn("variable name is not a valid topic level: not published", "device", d.id, "var", v)
		}
	}
	b.log.Debug("described", "device", d.id, "functions", len(desc.Functions), "variables", len(desc.Variables))
}

// syncVarsLocked makes the variable cache follow a new description: new
// variables are polled at once. d.mu is held.
func (b *Bridge) syncVarsLocked(d *dev, desc msg.Description, now time.Time) {
	for name := range d.vars {
		if _, ok := desc.Variables[name]; !ok {
			delete(d.vars, name)
		}
	}
	for name, typ := range desc.Variables {
		if ValidLevel(name) != nil {
			continue
		}
		vs := d.vars[name]
		if vs != nil && vs.typ == typ && (!vs.nextPoll.IsZero() || vs.has) {
			continue // known: keep its schedule
		}
		vs = &varState{typ: typ}
		d.vars[name] = vs
		if b.cfg.Devices.Poll(d.id, name, b.cfg.PollInterval) > 0 {
			vs.nextPoll = now
		}
	}
}

func sameDesc(a, b msg.Description) bool {
	return slices.Equal(a.Functions, b.Functions) && maps.Equal(a.Variables, b.Variables) &&
		a.Platform == b.Platform && a.HasPlatform == b.HasPlatform
}

func cloneDesc(d msg.Description) msg.Description {
	d.Functions = slices.Clone(d.Functions)
	d.Variables = maps.Clone(d.Variables)
	return d
}

// runCall delivers one call taken off the queue and publishes its outcome.
func (b *Bridge) runCall(d *dev, s *session, c *call) {
	ctx := b.stopCtx
	now := b.now()
	if !now.Before(c.expiresAt) {
		b.stats.callsExpired.Add(1)
		b.finishCall(ctx, d, c, result{Error: errExpired}, true)
		return
	}
	// A held call is marked as being delivered before it goes to the
	// device: if the bridge dies now, the restart reports it as interrupted
	// instead of running it twice.
	d.pubMu.Lock()
	if d.pendingOwner[c.fn] == c {
		at := now.UTC()
		_ = b.publish(ctx, b.t.pending(d.topic, c.fn), c.pending(d.id, &at), true)
	}
	d.pubMu.Unlock()

	octx, cancel := b.opCtx(s)
	rv, err := s.d.Call(octx, c.fn, c.arg)
	cancel()
	b.stats.deviceCalls.Add(1)
	if errors.Is(err, ErrGone) {
		s.end() // stop taking work: the session is over even if Done is not closed yet
	}
	if errors.Is(err, ErrNotSent) && b.requeue(ctx, d, c) {
		return
	}
	if err == nil {
		b.stats.callsOK.Add(1)
		b.finishCall(ctx, d, c, result{ReturnValue: &rv}, true)
		return
	}
	b.stats.callsError.Add(1)
	msg, retain := b.callError(s, err)
	b.log.Debug("call failed", "device", d.id, "fn", c.fn, "err", err)
	b.finishCall(ctx, d, c, result{Error: msg}, retain)
}

// requeue puts back a call that never left for a session that ended: the
// worker's exit holds it for the next session. It reports false when a
// newer call for the function took its place meanwhile (then c is
// superseded).
func (b *Bridge) requeue(ctx context.Context, d *dev, c *call) bool {
	d.mu.Lock()
	newer := d.calls[c.fn]
	if newer == nil {
		d.calls[c.fn] = c
	}
	d.mu.Unlock()
	if newer == nil {
		b.log.Debug("call not sent: queued again", "device", d.id, "fn", c.fn)
		d.pubMu.Lock()
		if d.pendingOwner[c.fn] == c { // undo the delivering mark
			_ = b.publish(ctx, b.t.pending(d.topic, c.fn), c.pending(d.id, nil), true)
		}
		d.pubMu.Unlock()
		return true
	}
	b.stats.callsSuperseded.Add(1)
	b.finishCall(ctx, d, c, result{Error: errSuperseded}, false)
	return true
}

// callError maps a device request error to the result's error text and
// whether the result is retained (an outcome of the function) or not (a
// refusal).
func (b *Bridge) callError(s *session, err error) (string, bool) {
	switch {
	case errors.Is(err, ErrNotFound):
		return errUnknownFunction, false
	case errors.Is(err, ErrArgTooLong):
		return errArgTooLong, false
	case errors.Is(err, ErrGone):
		return errDisconnected, true
	case errors.Is(err, ErrTimeout):
		return errTimeout, true
	}
	select {
	case <-s.ended:
		return errDisconnected, true
	case <-s.d.Done():
		return errDisconnected, true
	default:
	}
	if s.ctx.Err() != nil {
		return errStopping, true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errTimeout, true
	}
	return "device error: " + err.Error(), true
}

// read reads one variable (s.reading is set to it), publishes the value
// when it changed, is stale or was asked for, and answers the gets that
// joined the read.
func (b *Bridge) read(d *dev, s *session, name string, forced bool) {
	started := b.now() // polls are spaced from start to start
	ctx, cancel := b.opCtx(s)
	v, err := s.d.Get(ctx, name)
	cancel()
	b.stats.reads.Add(1)
	now := b.now()
	poll := b.cfg.Devices.Poll(d.id, name, b.cfg.PollInterval)

	d.mu.Lock()
	rs, asked := s.gets[name]
	delete(s.gets, name)
	s.reading = ""
	vs := d.vars[name]
	text := ""
	publish := false
	if err == nil {
		text = v.Text()
		if vs == nil && ValidLevel(name) == nil && len(d.vars) < msgMaxNames {
			vs = &varState{typ: v.Type}
			d.vars[name] = vs
		}
		if vs != nil {
			fresh := poll > 0 && now.Sub(vs.publishedAt) < Freshness(poll)
			publish = forced || asked || !vs.has || vs.text != text || !fresh
			vs.typ, vs.text, vs.has = v.Type, text, true
			if publish {
				vs.publishedAt = now
			}
		}
	}
	if vs != nil {
		if poll > 0 {
			vs.nextPoll = started.Add(poll)
		} else {
			vs.nextPoll = time.Time{}
		}
	}
	d.mu.Unlock()

	if errors.Is(err, ErrGone) {
		s.end()
	}
	if err != nil {
		b.stats.readErrors.Add(1)
		if b.alive(s) {
			b.lim.warn(b.log, "read:"+d.id+"/"+name, "read failed", "device", d.id, "var", name, "err", err)
		}
		e, _ := b.callError(s, err)
		if errors.Is(err, ErrNotFound) {
			e = "unknown variable"
		}
		b.respondVar(b.stopCtx, name, rs, "", e)
		return
	}
	if publish {
		b.stats.varPublishes.Add(1)
		d.pubMu.Lock()
		_ = b.publish(b.stopCtx, b.t.variable(d.topic, name), []byte(text), true)
		d.pubMu.Unlock()
	}
	b.respondVar(b.stopCtx, name, rs, text, "")
}

// msgMaxNames bounds the variable cache of one device (msg.MaxNames).
const msgMaxNames = 256

// varResponse is the JSON of an MQTT 5 response to a get.
type varResponse struct {
	Var   string  `json:"var"`
	Value *string `json:"value,omitempty"`
	Error string  `json:"error,omitempty"`
}

// respondVar answers the MQTT 5 requesters of a get.
func (b *Bridge) respondVar(ctx context.Context, name string, rs []responder, value, errText string) {
	if len(rs) == 0 {
		return
	}
	r := varResponse{Var: name, Error: errText}
	if errText == "" {
		r.Value = &value
	}
	p, _ := json.Marshal(r)
	for _, to := range rs {
		_ = b.publishMsg(ctx, broker.Message{Topic: to.topic, Payload: p, QoS: 1, CorrelationData: to.corr})
	}
}

// signal sends a signal request.
func (b *Bridge) signal(d *dev, s *session, on bool) {
	ctx, cancel := b.opCtx(s)
	err := s.d.Signal(ctx, on)
	cancel()
	if errors.Is(err, ErrGone) {
		s.end()
	}
	b.stats.signals.Add(1)
	if err != nil {
		b.lim.warn(b.log, "signal:"+d.id, "signal failed", "device", d.id, "err", err)
	}
}

// acceptGet asks the device's worker for a read now. Gets for a variable
// whose read is waiting or in flight join it (one device read serves them
// all).
func (b *Bridge) acceptGet(ctx context.Context, in inbound) {
	var rs []responder
	if in.resp != "" {
		rs = []responder{{topic: in.resp, corr: in.corr}}
	}
	d := b.lookup(in.d)
	if d == nil {
		b.stats.invalid.Add(1)
		b.lim.warn(b.log, "get-unknown", "get: unknown device", "device", in.d, "var", in.name)
		b.respondVar(ctx, in.name, rs, "", errUnknownDevice)
		return
	}
	d.mu.Lock()
	s := d.sess
	if s == nil {
		d.mu.Unlock()
		b.lim.warn(b.log, "get-offline:"+d.id, "get: device offline", "device", d.id, "var", in.name)
		b.respondVar(ctx, in.name, rs, "", errOffline)
		return
	}
	waiting, ok := s.gets[in.name]
	switch {
	case ok || s.reading == in.name:
		b.stats.getsJoined.Add(1)
		if len(waiting) < maxResponders {
			s.gets[in.name] = append(waiting, rs...)
		}
		d.mu.Unlock()
		return
	case len(s.gets) >= maxGets:
		d.mu.Unlock()
		b.lim.warn(b.log, "get-full:"+d.id, "get: too many variables waiting", "device", d.id, "var", in.name)
		b.respondVar(ctx, in.name, rs, "", errQueueFull)
		return
	}
	if rs == nil {
		rs = []responder{}
	}
	s.gets[in.name] = rs
	d.mu.Unlock()
	s.kick()
}
