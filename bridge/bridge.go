package bridge

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

type runState uint8

const (
	stateIdle runState = iota
	stateRunning
	stateStopping
	stateDone
)

// Bridge maps device sessions to MQTT topics. Create it with New, run it
// with Run, and feed it device sessions through DeviceOnline, DeviceEvent
// and DeviceOffline (or the coapdev.Handler from Handler). See the package
// documentation for the topics and the concurrency model.
type Bridge struct {
	// Immutable after New.
	cfg       Config
	log       *slog.Logger
	t         topics
	now       func() time.Time
	syncTopic string // where Run publishes its start marker (see restore.go)

	stats counters
	lim   limiter
	seq   atomic.Uint64 // call order

	in      chan inbound   // broker handlers → dispatcher; never closed; full: the new message is dropped and counted
	events  chan eventItem // device events and spark/events → event loop; never closed; full: the oldest is dropped and counted
	invKick chan struct{}  // cap 1: the inventory changed; never closed
	synced  chan struct{}  // closed by the dispatcher once the retained state is restored
	ready   chan struct{}  // closed by Run once the commands are subscribed and the state is online

	workers sync.WaitGroup // device workers; Add only under mu while stateRunning

	disco *discovery // Home Assistant discovery (discovery.go); immutable pointer

	subs    subIndex    // the sessions' event subscriptions (subindex.go)
	targets []subTarget // owned by the event loop (events.go): deliver's scratch

	mu sync.Mutex
	// Guarded by mu.
	state   runState
	devs    map[string]*dev // by id
	runCtx  context.Context // Run's ctx: workers stop when it is done
	stopCtx context.Context // Run's ctx plus ShutdownTimeout: bounds publishes and device requests after the stop
}

// New checks cfg and returns a Bridge that is not running yet.
func New(cfg Config) (*Bridge, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	t := topics{base: cfg.BaseTopic}
	b := &Bridge{
		cfg:       cfg,
		log:       cfg.Logger,
		t:         t,
		now:       cfg.Now,
		syncTopic: t.join(lvlBridge, lvlFn, "sync-"+hex.EncodeToString(nonce[:]), lvlPending),
		in:        make(chan inbound, cfg.InboundQueue),
		events:    make(chan eventItem, cfg.EventQueue),
		invKick:   make(chan struct{}, 1),
		synced:    make(chan struct{}),
		ready:     make(chan struct{}),
		devs:      map[string]*dev{},
		disco:     newDiscovery(),
	}
	b.lim.interval = 10 * time.Second
	b.lim.now = cfg.Now
	for id := range cfg.Devices.Devices {
		d := newDev(id, b.topicFor(id))
		d.listed = true
		b.devs[id] = d
	}
	return b, nil
}

// topicFor returns the topic level D of device id.
func (b *Bridge) topicFor(id string) string {
	if n := b.cfg.Devices.Name(id); n != "" {
		return n
	}
	return id
}

// Run subscribes to the command topics and runs the bridge until ctx is
// done. It first restores the held calls and the inventory from the
// broker's retained messages, then publishes bridge/state online. After ctx
// is done it stops taking commands, holds the calls still waiting (as
// retained pending messages), marks its devices offline, publishes
// bridge/state offline and returns once every goroutine it started has
// ended. The work after ctx is done is bounded by Config.ShutdownTimeout.
// It returns nil after a normal stop, or the error that kept it from
// starting (a failed subscribe). A Bridge runs once.
func (b *Bridge) Run(ctx context.Context) error {
	stopCtx, cancelStop := stopContext(ctx, b.cfg.ShutdownTimeout)
	defer cancelStop()

	b.mu.Lock()
	if b.state != stateIdle {
		b.mu.Unlock()
		return ErrAlreadyRunning
	}
	b.state = stateRunning
	b.runCtx = ctx
	b.stopCtx = stopCtx
	for _, d := range b.devs {
		d.mu.Lock()
		if d.sess != nil && !d.sess.worker {
			b.startWorkerLocked(d, d.sess)
		}
		d.mu.Unlock()
	}
	b.mu.Unlock()

	var dispatcher, loops sync.WaitGroup
	stopDispatch, stopEvents, stopHouse := make(chan struct{}), make(chan struct{}), make(chan struct{})
	dispatcher.Go(func() { b.dispatch(stopCtx, stopDispatch) })
	loops.Go(func() { b.eventLoop(stopCtx, stopEvents) })
	loops.Go(func() { b.housekeeping(stopCtx, stopHouse) })
	if b.cfg.Discovery {
		loops.Go(func() { b.discoveryLoop(stopCtx, stopHouse) })
	}

	unsubs, err := b.start(ctx)
	if err == nil {
		b.log.Info("bridge running", "topic", b.t.base)
		<-ctx.Done()
	}

	// Stop taking commands.
	for _, u := range unsubs {
		if uerr := u(stopCtx); uerr != nil {
			b.log.Debug("unsubscribe", "err", uerr)
		}
	}
	// Stop the workers: each holds its device's waiting calls and marks it offline.
	b.mu.Lock()
	b.state = stateStopping
	b.mu.Unlock()
	b.workers.Wait()
	// Then the dispatcher, which drains its queue (calls left in it are
	// held, since every device is offline now), then the other loops.
	close(stopDispatch)
	dispatcher.Wait()
	close(stopEvents)
	close(stopHouse)
	loops.Wait()

	if perr := b.publish(stopCtx, b.t.state(), []byte("offline"), true); perr != nil {
		b.log.Warn("publish bridge state offline", "err", perr)
	}
	b.mu.Lock()
	b.state = stateDone
	b.mu.Unlock()
	b.log.Info("bridge stopped")
	return err
}

// start subscribes to the retained state, waits until it is restored, then
// subscribes to the commands and publishes bridge/state online. It returns
// the unsubscribe functions of the subscriptions still active.
func (b *Bridge) start(ctx context.Context) (unsubs []func(context.Context) error, err error) {
	// Retained state first (restore.go). Pending last: the marker rides on
	// its subscription, behind its retained messages.
	var restore []func(context.Context) error
	for _, f := range []string{b.t.inventory(), b.t.filterAvailability(), b.t.filterPending()} {
		u, err := b.cfg.Client.Subscribe(ctx, f, 1, b.onMessage)
		if err != nil {
			b.unsubscribe(restore)
			return nil, fmt.Errorf("bridge: subscribe %s: %w", f, err)
		}
		restore = append(restore, u)
	}
	if err := b.cfg.Client.Publish(ctx, broker.Message{Topic: b.syncTopic, Payload: []byte("sync"), QoS: 1}); err != nil {
		b.log.Warn("publish start marker", "topic", b.syncTopic, "err", err)
	}
	select {
	case <-b.synced:
	case <-ctx.Done():
		b.unsubscribe(restore)
		return nil, nil
	}
	b.unsubscribe(restore)

	type sub struct {
		filter string
		h      broker.Handler
	}
	cmds := []sub{}
	for _, f := range []string{b.t.filterCall(), b.t.filterCallJSON(), b.t.filterGet(), b.t.filterSignal(), b.t.filterEvents()} {
		cmds = append(cmds, sub{f, b.onMessage})
	}
	if b.cfg.Discovery {
		cmds = append(cmds, sub{b.t.filterRemove(), b.onMessage}, sub{b.cfg.DiscoveryPrefix + "/status", b.onHAStatus})
	}
	for _, c := range cmds {
		u, err := b.cfg.Client.Subscribe(ctx, c.filter, 1, c.h)
		if err != nil {
			return unsubs, fmt.Errorf("bridge: subscribe %s: %w", c.filter, err)
		}
		unsubs = append(unsubs, u)
	}
	if err := b.publish(ctx, b.t.state(), []byte("online"), true); err != nil {
		b.log.Warn("publish bridge state online", "err", err)
	}
	close(b.ready)
	return unsubs, nil
}

// Ready returns a channel closed once Run has restored the held calls,
// subscribed to the command topics and published bridge/state online (for
// a readiness check). It is never closed if Run stops before that.
func (b *Bridge) Ready() <-chan struct{} { return b.ready }

func (b *Bridge) unsubscribe(us []func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.PublishTimeout)
	defer cancel()
	for _, u := range us {
		if err := u(ctx); err != nil {
			b.log.Debug("unsubscribe", "err", err)
		}
	}
}

// stopContext returns a context that is not cancelled with ctx but d after
// it, for the work of a graceful stop; stop releases it.
func stopContext(ctx context.Context, d time.Duration) (context.Context, func()) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var mu sync.Mutex
	var t *time.Timer
	done := false
	stopAF := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t = time.AfterFunc(d, cancel)
		}
	})
	return sctx, func() {
		stopAF()
		mu.Lock()
		done = true
		if t != nil {
			t.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// DeviceOnline tells the bridge that device d completed its handshake and
// Hello. It does not block: the device's worker (started here, owned by
// Run) announces it, describes it, delivers its held calls and polls its
// variables. A newer session of the same device replaces the older one.
func (b *Bridge) DeviceOnline(d Device, info DeviceInfo) {
	id, err := parseID(d.ID())
	if err != nil {
		b.log.Warn("device online: bad id", "device", d.ID(), "err", err)
		return
	}
	if info.ConnectedAt.IsZero() {
		info.ConnectedAt = b.now()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state >= stateStopping {
		b.log.Debug("device online while stopping: ignored", "device", id)
		return
	}
	dv := b.devs[id]
	if dv == nil {
		dv = newDev(id, b.topicFor(id))
		b.devs[id] = dv
	}
	dv.mu.Lock()
	s := &session{
		d: d, info: info,
		ended: make(chan struct{}), exited: make(chan struct{}), wake: make(chan struct{}, 1),
		prev: dv.last, gets: map[string][]responder{},
	}
	if dv.sess != nil {
		dv.sess.end()
	}
	dv.sess, dv.last = s, s
	dv.info = info
	dv.lastSeen = info.ConnectedAt
	dv.listed = true
	if b.state == stateRunning {
		b.startWorkerLocked(dv, s)
	}
	dv.mu.Unlock()
	b.kickInventory()
	b.discoveryRenew(id)
	b.log.Debug("device online", "device", id, "remote", info.Remote)
}

// startWorkerLocked starts the worker of session s. b.mu and d.mu are held.
func (b *Bridge) startWorkerLocked(d *dev, s *session) {
	s.worker = true
	s.ctx, s.cancel = context.WithCancel(b.stopCtx)
	select {
	case <-s.ended:
		s.cancel()
	default:
	}
	b.workers.Go(func() { b.runWorker(d, s) })
}

// DeviceOffline tells the bridge that device d's session ended (err says
// why; it is only logged). It does not block: the worker holds the calls
// still waiting and publishes availability offline. A call in flight gets
// the error result "device disconnected".
func (b *Bridge) DeviceOffline(d Device, err error) {
	id, perr := parseID(d.ID())
	if perr != nil {
		return
	}
	b.subs.remove(id, d) // also for a session the bridge never took (it was stopping)
	b.mu.Lock()
	dv := b.devs[id]
	b.mu.Unlock()
	if dv == nil {
		return
	}
	dv.mu.Lock()
	switch {
	case dv.sess != nil && dv.sess.d == d:
		dv.sess.end()
		dv.sess = nil
		dv.lastSeen = b.now()
	case dv.last != nil && dv.last.d == d:
		dv.last.end()
	}
	dv.mu.Unlock()
	b.kickInventory()
	b.log.Debug("device offline", "device", id, "err", err)
}

// DeviceEvent hands an event the device published to the bridge. It does
// not block: the event is queued (when the queue is full the oldest event is
// dropped and counted) and published on spark/D/event/NAME by the event
// loop, which also delivers it to the other devices subscribed to it.
func (b *Bridge) DeviceEvent(d Device, e msg.Event) {
	id, err := parseID(d.ID())
	if err != nil {
		return
	}
	e.Data = bytes.Clone(e.Data)
	b.enqueueEvent(eventItem{from: id, src: d, e: e})
}

// DeviceSubscribed tells the bridge that session d subscribed to the
// events whose names start with prefix: the event loop delivers such events
// to it (see Device.Send) until its DeviceOffline, or until a newer session
// of the same device subscribes. It does not block. The coapdev.Handler
// from Handler calls it before the session acknowledges the Subscribe.
func (b *Bridge) DeviceSubscribed(d Device, prefix string) {
	id, err := parseID(d.ID())
	if err != nil {
		return
	}
	select {
	case <-d.Done():
		return // an ended session's late Subscribe must not displace a newer one
	default:
	}
	b.subs.add(id, d, prefix)
}

// kickInventory asks for a (debounced) inventory publish.
func (b *Bridge) kickInventory() {
	select {
	case b.invKick <- struct{}{}:
	default:
	}
}

// isSynced reports whether the retained state has been restored.
func (b *Bridge) isSynced() bool {
	select {
	case <-b.synced:
		return true
	default:
		return false
	}
}

// publish sends one QoS 1 message, bounded by PublishTimeout. Failures are
// counted and logged (rate limited) and returned.
func (b *Bridge) publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	return b.publishMsg(ctx, broker.Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain})
}

func (b *Bridge) publishMsg(ctx context.Context, m broker.Message) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()
	return b.publishWithin(ctx, m)
}

// publishWithin is publishMsg with the caller's bound on the publish
// instead of PublishTimeout.
func (b *Bridge) publishWithin(ctx context.Context, m broker.Message) error {
	err := b.cfg.Client.Publish(ctx, m)
	if err != nil {
		b.stats.publishErrors.Add(1)
		b.lim.warn(b.log, "publish:"+m.Topic, "publish failed", "topic", m.Topic, "err", err)
	}
	return err
}

// limiter rate-limits log lines per key (a flood of bad input is one line
// per interval, with the count of lines suppressed).
type limiter struct {
	interval time.Duration
	now      func() time.Time

	mu sync.Mutex
	// Guarded by mu.
	last map[string]limEntry
}

type limEntry struct {
	at         time.Time
	suppressed int
}

// maxLimKeys bounds the limiter's memory; past it, the map is reset.
const maxLimKeys = 1024

func (l *limiter) allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.last == nil || len(l.last) > maxLimKeys {
		l.last = map[string]limEntry{}
	}
	e, seen := l.last[key]
	if seen && now.Sub(e.at) < l.interval {
		e.suppressed++
		l.last[key] = e
		return false, 0
	}
	l.last[key] = limEntry{at: now}
	return true, e.suppressed
}

func (l *limiter) warn(log *slog.Logger, key, msg string, args ...any) {
	if ok, n := l.allow(key); ok {
		if n > 0 {
			args = append(args, "suppressed", n)
		}
		log.Warn(msg, args...)
	}
}
