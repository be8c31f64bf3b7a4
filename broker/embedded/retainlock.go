package embedded

import (
	"context"
	"log/slog"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainGuard closes a data race in mochi v2.7.9's topic index between
// storing a retained message and scanning for the retained messages that
// match a filter.
//
// The race. Every write of a node's retained path (particle.retainPath)
// happens in TopicsIndex.RetainMessage or trim, under the index's root
// lock: a retained PUBLISH from the bridge or a network client, a will, a
// delayed will, the $SYS refresh and loading the store all go through
// them. TopicsIndex.Messages (scanMessages) reads the same field with no
// lock at all, for every filter with a wildcard. It is called in two
// places: Client.Subscribe here (inline subscriptions) and mochi's
// publishRetainedToClient, on a network client's read loop, after the
// SUBACK of each SUBSCRIBE, once per filter. A string is two words, so
// besides the race detector's report a torn read (a pointer and a length
// from two different strings) is possible.
//
// The fix: every scan holds the same root lock. mochi does not export it;
// bind finds it by reflection (TopicsIndex.root is a *particle that embeds
// its sync.Mutex), as the pacer reads the write queue's length.
// Holding the writers' own lock covers every writer, also those that no
// hook precedes (the $SYS refresh and delayed wills on mochi's event loop).
//
//   - Inline: Broker.retained takes it around Topics.Messages.
//   - Network: publishRetainedToClient cannot be wrapped, so a SUBSCRIBE is
//     a window on its client's read loop, bounded by calls that mochi makes
//     on that goroutine (server.go processSubscribe :1241-1313, processPacket
//     :714, publishRetainedToClient :1116-1134), in this order, on every
//     path: OnSubscribed (before the SUBACK is written: the window opens,
//     nothing is locked), OnPacketSent of the SUBACK (the write succeeded
//     and the scans come next: lock), then for each filter its scan and the
//     delivery of each message found, then OnPacketProcessed (always, error
//     or not: unlock). If the SUBACK write fails, mochi returns before any
//     scan and OnPacketSent never comes, so nothing was locked.
//
// Waits. Each delivery asks the ACL hook first, where the pacer may wait
// up to WriteTimeout/2 for a client that does not read; then mochi numbers
// a QoS 1 delivery under the client's lock, which the client's writer holds
// across each write to the connection (up to WriteTimeout), and the store
// writes it. The index lock must not be held through any of that: every
// retained publish, SUBSCRIBE and UNSUBSCRIBE of the broker would stall
// behind one slow client. So auth.OnACLCheck calls pause before the pacer:
// on the window's own goroutine that is always after a scan has returned
// (deliveries follow their scan), and pause lets the lock go. With one
// filter to scan (the common case) no scan follows: the window ends there
// and the lock stays free. With several, it must be held again before the
// next scan, which mochi starts with no hook before it; so the lock is
// taken back at the end of the delivery, which is always one of two calls
// on the same goroutine: OnRetainPublished (delivered) or mochi's Debug log
// "failed to publish retained message" (any failure: refused, quota,
// client closed, queue full); slog asks the handler Enabled before every
// record, so the broker's log handler (retainLogHook) is the hook there.
// The lock is thus held for the scans, the stretches between a delivery's
// end and the next one's ACL check, and deliveries that never reach the
// pacer (refused by the ACL, or skipped by No Local): never across a wait.
//
// Deliveries to the same client from other goroutines (live publishes)
// must not touch the window: they hold no index lock and pace as usual.
// mochi passes no context to the hooks, so the window records its
// goroutine's id (goid) and pause compares. If the id cannot be read the
// window keeps the lock through its deliveries and their waits: a stall
// bounded by WriteTimeout, never a race.
//
// Deadlock freedom: the index lock is the innermost lock this package
// takes (Client.mu, subscription.mu, then the index). While it is held,
// mochi's writers and scans take only its leaf locks (the particle maps,
// the retained map), and a window's goroutine runs only the code between
// two deliveries listed above; none of that takes one of our locks or
// calls mochi's Topics mutators, which take the index again. (In the
// degraded case without a goroutine id, a window also waits under it for
// the client's write queue and lock, which the client's writer releases
// without the index.) Every lock is released on the goroutine that took
// it, before that goroutine is done with its packet.
type retainGuard struct {
	mqtt.HookBase

	// Immutable after bind.
	index *sync.Mutex // mochi's TopicsIndex root lock; nil: unguarded

	open   atomic.Int32 // len(windows), read without mu on every delivery
	paused atomic.Int32 // windows waiting to take the lock back

	// Guarded by mu.
	mu      sync.Mutex
	windows map[*mqtt.Client]*window // network clients processing a SUBSCRIBE
}

// window is one network SUBSCRIBE being processed by its client's read
// loop.
type window struct {
	// Immutable after OnSubscribed.
	gid   uint64 // the read loop's goroutine id; 0: unknown
	scans int    // filters that may be scanned: at least as many as will be

	// Owned by the read loop.
	held   bool // the read loop holds the index lock
	paused bool // let go during a delivery, to be taken back at its end
}

func newRetainGuard() *retainGuard {
	return &retainGuard{windows: map[*mqtt.Client]*window{}}
}

// bind finds x's root lock. It reports false if this mochi version's index
// does not have the one expected: then scans stay unguarded (New logs it).
func (g *retainGuard) bind(x *mqtt.TopicsIndex) bool {
	root := reflect.ValueOf(x).Elem().FieldByName("root")
	if root.Kind() != reflect.Pointer || root.IsNil() {
		return false
	}
	mu := root.Elem().FieldByName("Mutex")
	if !mu.IsValid() || mu.Type() != reflect.TypeFor[sync.Mutex]() {
		return false
	}
	g.index = (*sync.Mutex)(mu.Addr().UnsafePointer())
	return true
}

// retained returns the retained messages matching filter, scanned under
// the index lock. See retainGuard.
func (b *Broker) retained(filter string) []packets.Packet {
	if g := b.retain; g.index != nil {
		g.index.Lock()
		defer g.index.Unlock()
	}
	return b.srv.Topics.Messages(filter)
}

// ID implements mqtt.Hook.
func (g *retainGuard) ID() string { return "spark2mqtt-retained-scans" }

// Provides implements mqtt.Hook. No other hook provides OnPacketSent,
// OnRetainPublished or OnPacketProcessed, so none runs under the index
// lock.
func (g *retainGuard) Provides(b byte) bool {
	switch b {
	case mqtt.OnSubscribed, mqtt.OnPacketSent, mqtt.OnRetainPublished, mqtt.OnPacketProcessed:
		return true
	}
	return false
}

// OnSubscribed implements mqtt.Hook: it opens a window for a network
// SUBSCRIBE that may scan. mochi calls it on the client's read loop just
// before writing the SUBACK.
func (g *retainGuard) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return // mochi's own Server.Subscribe, which this package does not use
	}
	// publishRetainedToClient skips refused filters, shared ones and
	// "retain handling 2"; "1" depends on whether the subscription existed,
	// so it counts: an upper bound only keeps the lock longer.
	scans := 0
	for i, sub := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code &&
			!mqtt.IsSharedFilter(sub.Filter) && sub.RetainHandling != 2 {
			scans++
		}
	}
	if scans == 0 {
		return
	}
	id, _ := goid()
	g.mu.Lock()
	g.windows[cl] = &window{gid: id, scans: scans}
	g.open.Store(int32(len(g.windows)))
	g.mu.Unlock()
}

// OnPacketSent implements mqtt.Hook: once the SUBACK is written, the read
// loop goes on to the scans, so it takes the index lock.
func (g *retainGuard) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	if w := g.window(cl); w != nil {
		g.index.Lock()
		w.held = true
	}
}

// OnRetainPublished implements mqtt.Hook: mochi calls it on the read loop
// after each retained message delivered in a window.
func (g *retainGuard) OnRetainPublished(cl *mqtt.Client, _ packets.Packet) {
	if g.paused.Load() == 0 {
		return
	}
	if w := g.window(cl); w != nil {
		g.retake(w)
	}
}

// OnPacketProcessed implements mqtt.Hook: the SUBSCRIBE is done, the window
// closes.
func (g *retainGuard) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Subscribe || g.open.Load() == 0 {
		return
	}
	w := g.forget(cl)
	if w == nil {
		return
	}
	if w.paused {
		w.paused = false
		g.paused.Add(-1)
	}
	if w.held {
		w.held = false
		g.index.Unlock()
	}
}

// forget removes cl's window and returns it.
func (g *retainGuard) forget(cl *mqtt.Client) *window {
	g.mu.Lock()
	defer g.mu.Unlock()
	w := g.windows[cl]
	delete(g.windows, cl)
	g.open.Store(int32(len(g.windows)))
	return w
}

func (g *retainGuard) window(cl *mqtt.Client) *window {
	if g.open.Load() == 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.windows[cl]
}

// pause is called before the pacer may make a delivery to cl wait. On
// cl's own read loop inside a SUBSCRIBE window, a scan has returned and
// this is the delivery of one of its messages: pause lets the index lock
// go, to be taken back at the delivery's end if another scan may follow,
// else for good. Anywhere else it does nothing. A nil guard does nothing.
func (g *retainGuard) pause(cl *mqtt.Client) {
	if g == nil {
		return
	}
	w := g.window(cl)
	if w == nil || w.gid == 0 {
		return
	}
	if id, ok := goid(); !ok || id != w.gid {
		return // a live delivery from another goroutine
	}
	if !w.held {
		return
	}
	w.held = false
	g.index.Unlock()
	if w.scans == 1 {
		g.forget(cl) // the only scan is over: the window has nothing left to guard
		return
	}
	w.paused = true
	g.paused.Add(1)
}

// retake takes the index lock back for w at the end of a delivery that
// paused. Only w's read loop calls it.
func (g *retainGuard) retake(w *window) {
	if !w.paused {
		return
	}
	w.paused = false
	g.paused.Add(-1)
	g.index.Lock()
	w.held = true
}

// logged is called by retainLogHook for every record mochi may log, on the
// logging goroutine: a window's read loop that paused takes the lock back.
func (g *retainGuard) logged() {
	if g.paused.Load() == 0 {
		return
	}
	id, ok := goid()
	if !ok {
		return
	}
	g.mu.Lock()
	var mine *window
	for _, w := range g.windows {
		if w.gid == id {
			mine = w
			break
		}
	}
	g.mu.Unlock()
	if mine != nil {
		g.retake(mine)
	}
}

// retainLogHook is the slog.Handler mochi logs through: it tells the guard
// of each record before mochi logs it (see retainGuard).
type retainLogHook struct {
	slog.Handler
	g *retainGuard
}

func (h retainLogHook) Enabled(ctx context.Context, l slog.Level) bool {
	h.g.logged()
	return h.Handler.Enabled(ctx, l)
}

func (h retainLogHook) WithAttrs(as []slog.Attr) slog.Handler {
	return retainLogHook{h.Handler.WithAttrs(as), h.g}
}

func (h retainLogHook) WithGroup(name string) slog.Handler {
	return retainLogHook{h.Handler.WithGroup(name), h.g}
}

// goid returns the calling goroutine's id, read from the header of its
// stack trace ("goroutine 42 [running]:"); false if that does not parse.
// It costs a stack walk: use it only when the answer matters.
func goid() (uint64, bool) {
	var buf [32]byte
	b := buf[:runtime.Stack(buf[:], false)]
	const prefix = "goroutine "
	if len(b) <= len(prefix) || string(b[:len(prefix)]) != prefix {
		return 0, false
	}
	var id uint64
	n := 0
	for _, c := range b[len(prefix):] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
		n++
	}
	if n == 0 || n > 19 || len(prefix)+n >= len(b) || b[len(prefix)+n] != ' ' {
		return 0, false
	}
	return id, id != 0
}
