package embedded

import (
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// pacer turns mochi's per-client write queue from "drop when full" into
// "the delivering goroutine waits when it is nearly full".
//
// mochi queues each delivery to a network client in a fixed channel of
// Config.ClientWritesPending slots and drops it when the channel is full,
// QoS 1 included. Its default (8192) makes drops rare but costs 64 KiB per
// client; a small queue saves the memory but drops a burst: thousands of
// retained messages to a new "spark/#" subscriber, or the bridge publishing
// its state at start-up (TestBurstNotDropped). mochi asks the ACL hook about
// every delivery just before it queues it (OnACLCheck, write false), so the
// auth hook calls wait there: while the client's queue is over three
// quarters full, wait until it is down to half, the client is gone, the
// broker closes, or maxWait (half of Config.WriteTimeout) passes; then
// mochi's own policy applies: drop when full. The
// wait happens on the goroutine that delivers: the Client.Publish caller,
// the read loop of the network client that published, or the subscriber's
// own read loop for retained messages: TCP-style backpressure.
//
// mochi does not export the queue's length, so it is read through
// reflection (len of ClientState.outbound). newPacer reports whether that
// field exists in this mochi version; without it there is no pacing and
// the broker logs it.
type pacer struct {
	mqtt.HookBase // OnDisconnect only; never OnACLCheck (see auth.OnACLCheck)

	// Immutable after newPacer.
	capacity int
	maxWait  time.Duration
	field    []int // index path of ClientState.outbound in mqtt.Client
	log      *slog.Logger

	stopped atomic.Bool   // set by Broker.Close: stop waiting
	waits   atomic.Uint64 // deliveries that had to wait
	nStuck  atomic.Int32  // len(stuck), read without the lock

	// stuck holds the clients whose queue did not drain within maxWait:
	// deliveries to them do not wait again (one client that stopped reading
	// must not slow every publish down to one per maxWait) until their queue
	// is down to half. Guarded by mu.
	mu    sync.Mutex
	stuck map[*mqtt.Client]struct{}
}

const pacerPoll = 200 * time.Microsecond

// newPacer returns a pacer for queues of capacity slots that waits at most
// maxWait for one.
func newPacer(capacity int, maxWait time.Duration, log *slog.Logger) (*pacer, bool) {
	f, ok := reflect.TypeFor[mqtt.Client]().FieldByName("State")
	if !ok {
		return nil, false
	}
	out, ok := f.Type.FieldByName("outbound")
	if !ok || out.Type.Kind() != reflect.Chan {
		return nil, false
	}
	return &pacer{
		capacity: capacity, maxWait: maxWait, field: append(f.Index, out.Index...), log: log,
		stuck: map[*mqtt.Client]struct{}{},
	}, true
}

// ID implements mqtt.Hook.
func (p *pacer) ID() string { return "spark2mqtt-pacer" }

// Provides implements mqtt.Hook.
func (p *pacer) Provides(b byte) bool { return b == mqtt.OnDisconnect }

// OnDisconnect implements mqtt.Hook: forget a stuck client.
func (p *pacer) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { p.unstick(cl) }

func (p *pacer) queued(cl *mqtt.Client) int {
	return reflect.ValueOf(cl).Elem().FieldByIndex(p.field).Len()
}

// wait blocks while cl's write queue is too full to take more; see pacer.
// A nil pacer never waits.
func (p *pacer) wait(cl *mqtt.Client) {
	if p == nil || cl.Net.Inline || cl.Net.Conn == nil {
		return
	}
	n := p.queued(cl)
	if n < p.capacity*3/4 {
		if n <= p.capacity/2 {
			p.unstick(cl)
		}
		return
	}
	if p.isStuck(cl) {
		return
	}
	p.waits.Add(1)
	deadline := time.Now().Add(p.maxWait)
	for p.queued(cl) > p.capacity/2 {
		if cl.Closed() || p.stopped.Load() {
			return
		}
		if time.Now().After(deadline) {
			p.mu.Lock()
			p.stuck[cl] = struct{}{}
			p.nStuck.Store(int32(len(p.stuck)))
			p.mu.Unlock()
			p.log.Warn("mqtt client not reading: deliveries to it may be dropped",
				"client", cl.ID, "remote", cl.Net.Remote, "queue", p.queued(cl))
			return
		}
		time.Sleep(pacerPoll)
	}
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
