package embedded

import (
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// pacer turns mochi's limits per network client from "drop when full"
// into "the delivering goroutine waits when it is nearly full". Two limits:
//
//   - the write queue: mochi queues each delivery in a fixed channel of
//     Config.ClientWritesPending slots and drops it when the channel is
//     full, QoS 1 included. Its default (8192) makes drops rare but costs
//     64 KiB per client; a small queue saves the memory but drops a burst:
//     thousands of retained messages to a new "spark/#" subscriber, or the
//     bridge publishing its state at start-up (TestBurstNotDropped);
//   - the in-flight window: mochi drops (and logs at Warn, each time) a QoS
//     1 or 2 delivery to a client that has MaximumInflight deliveries not
//     yet acknowledged. A subscriber that reads fast but acknowledges late
//     (paho acknowledges after its handler) has its TCP buffers and its own
//     queues hold thousands: the write queue stays short and the window
//     fills instead (TestSlowAcksNotDropped).
//
// mochi asks the ACL hook about every delivery just before it queues it
// (OnACLCheck, write false), so the auth hook calls wait there: once the
// client's write queue or its in-flight window is three quarters full,
// wait until that one is down to half (the other one below three quarters),
// the client is gone, the broker closes, or maxWait (half of
// Config.WriteTimeout) passes; then mochi's own policy applies: drop when
// full. (Waiting for both to be down to half would wait for nothing when
// the queue filled while a client that acknowledges in batches holds an
// in-flight window between half and three quarters full.) The wait happens on the goroutine that
// delivers: the Client.Publish caller, the read loop of the network client
// that published, or the subscriber's own read loop for retained messages:
// TCP-style backpressure.
//
// A waiter sleeps on a channel closed once there is room again, by the
// client's write loop (mochi's OnPacketSent hook, after each packet it
// writes) or read loop (OnQosComplete, after each acknowledgement), so a
// delivery goes on as soon as it can, and they pay one atomic load per
// packet while nobody waits. A failed write (no hook: see
// writeTimeoutConn.broken) and a disconnect end the waits for that client.
//
// mochi does not export the write queue's length, so it is read through
// reflection (len of ClientState.outbound). newPacer reports whether that
// field exists in this mochi version; without it there is no pacing and
// the broker logs it.
type pacer struct {
	mqtt.HookBase // OnPacketSent, OnQosComplete and OnDisconnect only; never OnACLCheck (see auth.OnACLCheck)

	// Immutable after newPacer.
	capacity int // of a client's write queue
	inflight int // mochi's MaximumInflight
	maxWait  time.Duration
	field    []int // index path of ClientState.outbound in mqtt.Client
	log      *slog.Logger
	stop     chan struct{} // closed by close: waiters go on; never reopened

	waits    atomic.Uint64 // deliveries that had to wait
	nStuck   atomic.Int32  // len(stuck), read without the lock
	nWaiting atomic.Int32  // len(waiters), read without the lock

	mu       sync.Mutex
	stopOnce sync.Once
	// waiters maps a client that is full (see pacer) to the gate its
	// waiting deliveries sleep on, opened (and removed) once it has room,
	// or when the client disconnects. Guarded by mu.
	waiters map[*mqtt.Client]*gate
	// stuck holds the clients that did not make room within maxWait:
	// deliveries to them do not wait again (one client that stopped reading
	// must not slow every publish down to one per maxWait) until they have
	// room. Guarded by mu.
	stuck map[*mqtt.Client]struct{}
}

// newPacer returns a pacer for write queues of capacity slots and
// in-flight windows of inflight messages that waits at most maxWait for
// room.
func newPacer(capacity, inflight int, maxWait time.Duration, log *slog.Logger) (*pacer, bool) {
	f, ok := reflect.TypeFor[mqtt.Client]().FieldByName("State")
	if !ok {
		return nil, false
	}
	out, ok := f.Type.FieldByName("outbound")
	if !ok || out.Type.Kind() != reflect.Chan {
		return nil, false
	}
	return &pacer{
		capacity: capacity, inflight: inflight, maxWait: maxWait, field: append(f.Index, out.Index...), log: log,
		stop:    make(chan struct{}),
		waiters: map[*mqtt.Client]*gate{},
		stuck:   map[*mqtt.Client]struct{}{},
	}, true
}

// ID implements mqtt.Hook.
func (p *pacer) ID() string { return "spark2mqtt-pacer" }

// Provides implements mqtt.Hook.
func (p *pacer) Provides(b byte) bool {
	return b == mqtt.OnDisconnect || b == mqtt.OnPacketSent || b == mqtt.OnQosComplete
}

// OnDisconnect implements mqtt.Hook: deliveries waiting for cl go on
// (mochi drops them, cl is gone), and a stuck cl is forgotten.
func (p *pacer) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	p.release(cl, true)
	p.unstick(cl)
}

// OnPacketSent implements mqtt.Hook. mochi calls it after writing a packet
// to cl, on cl's write loop (or wherever it wrote an ack): deliveries
// waiting for cl go on once it has room.
func (p *pacer) OnPacketSent(cl *mqtt.Client, _ packets.Packet, _ []byte) {
	p.release(cl, false)
}

// OnQosComplete implements mqtt.Hook. mochi calls it when a QoS flow with
// cl completes (cl acknowledged a delivery), on cl's read loop: deliveries
// waiting for cl go on once it has room.
func (p *pacer) OnQosComplete(cl *mqtt.Client, _ packets.Packet) {
	p.release(cl, false)
}

// pacerRecheck is how often a waiting delivery looks again without being
// woken: the wake-ups cover every way a client makes room but one (mochi
// skips, with no hook, a packet too large for the client), which so costs
// at most this long.
const pacerRecheck = 20 * time.Millisecond

// gate is what the deliveries waiting for one client sleep on. Guarded by
// pacer.mu.
type gate struct {
	ch chan struct{} // closed when the gate opens
	// Which limit holds the gate shut: set at three quarters full, cleared
	// at half.
	queue, inflight bool
}

// update re-reads cl's limits into g and reports whether g may open.
func (p *pacer) update(g *gate, cl *mqtt.Client) bool {
	q, f := p.queued(cl), cl.State.Inflight.Len()
	switch {
	case q >= p.capacity*3/4:
		g.queue = true
	case q <= p.capacity/2:
		g.queue = false
	}
	switch {
	case f >= p.inflight*3/4:
		g.inflight = true
	case f <= p.inflight/2:
		g.inflight = false
	}
	return !g.queue && !g.inflight
}

// release opens cl's gate, if any: always when force, else when cl has
// room.
func (p *pacer) release(cl *mqtt.Client, force bool) {
	if p.nWaiting.Load() == 0 {
		return
	}
	p.mu.Lock()
	if g, ok := p.waiters[cl]; ok && (force || p.update(g, cl)) {
		p.openLocked(cl, g)
	}
	p.mu.Unlock()
}

func (p *pacer) openLocked(cl *mqtt.Client, g *gate) {
	close(g.ch)
	delete(p.waiters, cl)
	p.nWaiting.Store(int32(len(p.waiters)))
}

// close makes every waiting and future delivery go on at once (Broker.Close).
func (p *pacer) close() {
	p.stopOnce.Do(func() { close(p.stop) })
}

func (p *pacer) queued(cl *mqtt.Client) int {
	return reflect.ValueOf(cl).Elem().FieldByIndex(p.field).Len()
}

// full reports whether cl's write queue or in-flight window is over three
// quarters full.
func (p *pacer) full(cl *mqtt.Client) bool {
	return p.queued(cl) >= p.capacity*3/4 || cl.State.Inflight.Len() >= p.inflight*3/4
}

// roomy reports whether cl's write queue and in-flight window are both at
// most half full (a stuck client is forgotten then).
func (p *pacer) roomy(cl *mqtt.Client) bool {
	return p.queued(cl) <= p.capacity/2 && cl.State.Inflight.Len() <= p.inflight/2
}

// wait blocks while cl is too full to take more; see pacer. A nil pacer
// never waits, nor does anyone for a client that is not connected (mochi
// keeps a persistent session's messages for later).
func (p *pacer) wait(cl *mqtt.Client) {
	if p == nil || cl.Net.Inline || cl.Net.Conn == nil || cl.Closed() {
		return
	}
	// A client whose writes failed gets nothing more: waiting for it would
	// be waiting for nothing (mochi drains its queue with failed writes,
	// which call no hook).
	var broken <-chan struct{}
	if wc, ok := cl.Net.Conn.(*writeTimeoutConn); ok {
		broken = wc.broken
		select {
		case <-broken:
			return
		default:
		}
	}
	if !p.full(cl) {
		if p.nStuck.Load() != 0 && p.roomy(cl) {
			p.unstick(cl)
		}
		return
	}
	if p.isStuck(cl) {
		return
	}
	p.waits.Add(1)
	timer := time.NewTimer(p.maxWait)
	defer timer.Stop()
	recheck := time.NewTicker(pacerRecheck)
	defer recheck.Stop()
	for {
		// The gate is checked after it is registered, so room made
		// meanwhile cannot be missed.
		ch, open := p.gate(cl)
		if open {
			return
		}
		if cl.Closed() || p.isStuck(cl) {
			p.release(cl, true) // the others waiting for cl go on too
			return
		}
		select {
		case <-ch:
			// The gate opened, cl disconnected, or another waiter gave
			// up: check again.
		case <-broken:
			p.release(cl, true)
			return
		case <-recheck.C:
			// A safety net: mochi consumes a packet it cannot encode or
			// send without any hook; check again.
		case <-p.stop:
			return
		case <-timer.C:
			p.mu.Lock()
			p.stuck[cl] = struct{}{}
			p.nStuck.Store(int32(len(p.stuck)))
			p.mu.Unlock()
			p.release(cl, true)
			p.log.Warn("mqtt client not reading or not acknowledging: deliveries to it may be dropped",
				"client", cl.ID, "remote", cl.Net.Remote, "queue", p.queued(cl), "inflight", cl.State.Inflight.Len())
			return
		}
	}
}

// gate returns the channel of cl's gate, registering one, and whether the
// gate is open (then it is removed, and its channel closed).
func (p *pacer) gate(cl *mqtt.Client) (<-chan struct{}, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.waiters[cl]
	if !ok {
		g = &gate{ch: make(chan struct{})}
		p.waiters[cl] = g
		p.nWaiting.Store(int32(len(p.waiters)))
	}
	if p.update(g, cl) {
		p.openLocked(cl, g)
		return g.ch, true
	}
	return g.ch, false
}

func (p *pacer) isStuck(cl *mqtt.Client) bool {
	if p.nStuck.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.stuck[cl]
	return ok
}

func (p *pacer) unstick(cl *mqtt.Client) {
	if p.nStuck.Load() == 0 {
		return
	}
	p.mu.Lock()
	delete(p.stuck, cl)
	p.nStuck.Store(int32(len(p.stuck)))
	p.mu.Unlock()
}
