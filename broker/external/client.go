package external

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Client is a broker.Client for an external MQTT broker, through paho. It
// keeps itself connected (see the package documentation). Create it with
// New, then call Start. It is safe for concurrent use.
type Client struct {
	// Immutable after New.
	cfg       Config
	st        settings
	log       *slog.Logger
	ctx       context.Context    // the client's lifetime, cancelled by Close after the flush
	cancel    context.CancelFunc // cancels ctx
	closing   chan struct{}      // closed when Close starts; never reopened
	done      chan struct{}      // closed when Close has waited for every goroutine
	kick      chan struct{}      // capacity 1: wakes the drainer; never closed
	connected chan struct{}      // capacity 1: wakes the OnConnect loop; never closed
	closeOnce sync.Once

	// wg counts every goroutine the client starts: the connection loop,
	// the drainer, the OnConnect loop, one delivery goroutine per
	// subscription and Close's waiter. Close waits for it.
	wg sync.WaitGroup

	// inflight counts QoS ≥ 1 publishes sent directly and not yet
	// acknowledged. Added to under mu while not closed, so Close can wait
	// for it to drain before it disconnects.
	inflight sync.WaitGroup

	// view is the router's copy-on-write snapshot of the subscriptions,
	// read without locks on paho's goroutine. Written under mu.
	view atomic.Pointer[[]*subscription]

	// subMu serialises the hand-off of SUBSCRIBE and UNSUBSCRIBE packets to
	// paho, so that they reach the broker in the order we decided them. It
	// is held across a paho call (a channel send bounded by the write
	// timeout), never across a wait for an acknowledgement. Lock order:
	// subMu before mu.
	subMu sync.Mutex

	mu sync.Mutex
	// Guarded by mu.
	started  bool
	closed   bool
	live     paho.Client   // the connection now (set before re-subscribing), or nil
	ready    bool          // live and subscriptions restored
	readyCh  chan struct{} // closed while ready; replaced when the connection ends
	downCh   chan struct{} // closed when the live connection ends; replaced per connection
	lastErr  error         // the last connection failure, nil after a success
	subs     map[*subscription]struct{}
	filters  map[string]*filterRefs // broker-level subscriptions by filter
	stale    map[string]struct{}    // persistent session: filters whose UNSUBSCRIBE has not reached the broker
	out      outbox                 // QoS ≥ 1 messages waiting for the broker
	draining bool                   // the drainer holds entries taken from out that are not yet handed to paho
	idleCh   chan struct{}          // closed when out is empty and nothing taken from it is unacknowledged; nil while idle
	warnedAt time.Time              // last "buffer full" warning (rate limit)

	// Counters, read by Stats.
	nConnects, nFailures                    atomic.Uint64
	nBufferFull, nCoalesced, nResent, nLost atomic.Uint64
	nDropped                                atomic.Uint64
}

// filterRefs counts the local subscriptions of one filter, per QoS, so the
// broker is asked for the highest one and unsubscribed only when the last
// goes.
type filterRefs struct {
	byQoS [3]int
}

func (f *filterRefs) total() int { return f.byQoS[0] + f.byQoS[1] + f.byQoS[2] }

func (f *filterRefs) max() byte {
	for q := 2; q > 0; q-- {
		if f.byQoS[q] > 0 {
			return byte(q)
		}
	}
	return 0
}

// Stats are the client's counters, for metrics and tests.
type Stats struct {
	Ready           bool   // connected and subscriptions restored
	Connects        uint64 // successful connections, the first included
	ConnectFailures uint64 // failed connection attempts
	Buffered        int    // QoS ≥ 1 messages waiting for the broker now
	BufferFull      uint64 // publishes refused with broker.ErrBufferFull
	Coalesced       uint64 // buffered retained messages replaced by a newer one for their topic
	Resent          uint64 // buffered messages sent after a (re)connect
	Lost            uint64 // buffered messages still undelivered when Close gave up on them
	Dropped         uint64 // inbound messages dropped because a subscription's queue was full
}

var _ broker.Client = (*Client)(nil)
var _ broker.Readiness = (*Client)(nil)

// New validates cfg, loads its TLS files and returns a Client that is not
// yet connected: Publish (QoS ≥ 1) buffers and Subscribe registers until
// Start has connected it. Errors wrap ErrBadURL, ErrConfig, ErrCAFile or
// ErrClientCert. New starts no goroutine.
func New(cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	st, err := prepare(cfg)
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:       cfg,
		st:        st,
		log:       cfg.Logger.With("addr", st.addr),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
		kick:      make(chan struct{}, 1),
		connected: make(chan struct{}, 1),
		readyCh:   make(chan struct{}),
		downCh:    make(chan struct{}),
		subs:      make(map[*subscription]struct{}),
		filters:   make(map[string]*filterRefs),
		stale:     make(map[string]struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	close(c.downCh) // not connected yet
	if cfg.InsecureSkipVerify {
		c.log.Warn("broker certificate verification is off (insecure_skip_verify): anyone on the network path can impersonate the broker and read the credentials; set a CA file instead",
			"insecure_skip_verify", true)
	}
	return c, nil
}

// Start begins connecting in the background and returns at once: a broker
// that cannot be reached is retried (with a log line per attempt naming the
// address, the error and the next try) until it can, or until Close. Use
// WaitReady or Ready to learn when it is connected. Start is idempotent; it
// returns broker.ErrClosed after Close.
func (c *Client) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return broker.ErrClosed
	}
	if c.started {
		return nil
	}
	c.started = true
	c.wg.Add(1)
	go c.run()
	if c.cfg.OnConnect != nil {
		c.wg.Add(1)
		go c.onConnectLoop()
	}
	return nil
}

// Connect is New, Start and WaitReady in one call: it returns a connected
// Client, or an error (the client is then closed). With an unreachable
// broker it waits until ctx is done and returns an error that wraps the last
// attempt's (errors.Is(err, ErrBadCredentials) and so on).
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	if err := c.WaitReady(ctx); err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), c.cfg.ConnectTimeout)
		defer cancel()
		_ = c.Close(cctx)
		return nil, err
	}
	return c, nil
}

// Ready reports whether the client is connected and its subscriptions are
// restored. It implements broker.Readiness.
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// WaitReady blocks until the client is ready, ctx is done or the client is
// closed. When ctx ends first, the error wraps ctx.Err() and the last
// connection failure (ErrUnreachable, ErrBadCredentials, ErrTLS, ...).
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		c.mu.Lock()
		closed, ready, ch := c.closed, c.ready, c.readyCh
		c.mu.Unlock()
		switch {
		case closed:
			return broker.ErrClosed
		case ready:
			return nil
		}
		select {
		case <-ch:
		case <-c.closing:
		case <-ctx.Done():
			c.mu.Lock()
			last := c.lastErr
			c.mu.Unlock()
			if last != nil {
				return fmt.Errorf("external: not connected to %s: %w; last attempt: %w", c.st.addr, ctx.Err(), last)
			}
			return fmt.Errorf("external: not connected to %s: %w", c.st.addr, ctx.Err())
		}
	}
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	ready, buffered := c.ready, c.out.len()
	c.mu.Unlock()
	return Stats{
		Ready:           ready,
		Connects:        c.nConnects.Load(),
		ConnectFailures: c.nFailures.Load(),
		Buffered:        buffered,
		BufferFull:      c.nBufferFull.Load(),
		Coalesced:       c.nCoalesced.Load(),
		Resent:          c.nResent.Load(),
		Lost:            c.nLost.Load(),
		Dropped:         c.nDropped.Load(),
	}
}

// Publish sends m (see broker.Client). QoS 0 needs a connection now
// (broker.ErrNotConnected otherwise) and returns once paho has written the
// packet. QoS 1 and 2 return once the broker has acknowledged the message,
// or once it is in the offline buffer when the broker is away, when earlier
// buffered messages are still being sent (to keep them in order), or when
// the connection failed under it; from the buffer it is delivered after the
// reconnect, at least once. A full buffer returns broker.ErrBufferFull. If
// ctx ends while the broker has not acknowledged, Publish returns the ctx
// error and the message may or may not arrive.
//
// ResponseTopic and CorrelationData cannot be carried by MQTT 3.1.1 and are
// ignored. The payload is copied: the caller may reuse its buffer.
func (c *Client) Publish(ctx context.Context, m broker.Message) error {
	if m.QoS > 2 {
		return fmt.Errorf("external: publish %q: %w", m.Topic, ErrBadQoS)
	}
	if err := checkTopic(m.Topic); err != nil {
		return fmt.Errorf("external: publish %q: %w", m.Topic, err)
	}
	if n := packetSize(m.Topic, len(m.Payload), m.QoS); n > c.cfg.MaxPacketSize {
		return fmt.Errorf("external: publish %q: packet of %d bytes, limit %d: %w", m.Topic, n, c.cfg.MaxPacketSize, broker.ErrTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("external: publish %q: %w", m.Topic, err)
	}
	// Our own copy: the caller may reuse its buffer as soon as we return,
	// and paho (or the buffer) may still hold this one.
	payload := bytes.Clone(m.Payload)

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return broker.ErrClosed
	}
	pc, down := c.live, c.downCh
	if m.QoS == 0 {
		c.mu.Unlock()
		if pc == nil {
			return fmt.Errorf("external: publish %q: %w", m.Topic, broker.ErrNotConnected)
		}
		tok := pc.Publish(m.Topic, 0, m.Retain, payload)
		if err := wait(ctx, down, tok); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("external: publish %q: %w", m.Topic, err)
			}
			return fmt.Errorf("external: publish %q: %w: %w", m.Topic, broker.ErrNotConnected, err)
		}
		return nil
	}
	if !c.ready || c.out.len() > 0 || c.draining {
		return c.buffer(&entry{topic: m.Topic, payload: payload, qos: m.QoS, retain: m.Retain}) // unlocks
	}
	c.inflight.Add(1) // under mu with closed false: Close waits for it
	c.mu.Unlock()

	tok := pc.Publish(m.Topic, m.QoS, m.Retain, payload)
	err := wait(ctx, down, tok)
	c.inflight.Done()
	if err == nil {
		return nil
	}
	if errors.Is(err, ctx.Err()) { // ctx ended before the broker answered
		return fmt.Errorf("external: publish %q: %w", m.Topic, err)
	}
	// The connection failed under the message: it goes to the buffer and
	// out with the next connection.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("external: publish %q: %w", m.Topic, broker.ErrClosed)
	}
	return c.buffer(&entry{topic: m.Topic, payload: payload, qos: m.QoS, retain: m.Retain}) // unlocks
}

// buffer appends e to the offline buffer, applying the overflow policy: a
// retained message replaces a buffered one for its topic; anything else is
// refused when the buffer is full. It is called with c.mu held and
// releases it.
func (c *Client) buffer(e *entry) error {
	if !c.out.wouldReplace(e) && c.out.len() >= c.cfg.BufferSize {
		buffered := c.out.len()
		warn := time.Since(c.warnedAt) >= 10*time.Second
		if warn {
			c.warnedAt = time.Now()
		}
		c.mu.Unlock()
		n := c.nBufferFull.Add(1)
		if warn {
			c.log.Warn("offline buffer full, refusing publishes", "topic", e.topic, "buffered", buffered, "refused_total", n)
		}
		return fmt.Errorf("external: publish %q: %w", e.topic, broker.ErrBufferFull)
	}
	if c.out.pushBack(e) {
		c.nCoalesced.Add(1)
	}
	if c.idleCh == nil {
		c.idleCh = make(chan struct{})
	}
	c.mu.Unlock()
	c.wake()
	return nil
}

// wake tells the drainer that the buffer has something (non-blocking).
func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// errConnectionEnded is wait's answer when the connection a token belongs
// to ended before the token completed.
var errConnectionEnded = errors.New("connection ended before the broker acknowledged")

// wait waits for a paho token, the end of its connection (down) or ctx.
// The end of the connection must be watched: paho completes the tokens of
// unacknowledged messages when a clean-session connection is lost, but
// never with a persistent session (it keeps them for a resume we do not
// use, on a paho client we throw away).
func wait(ctx context.Context, down <-chan struct{}, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-down:
		select {
		case <-tok.Done():
			return tok.Error()
		default:
			return errConnectionEnded
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Subscribe registers h for filter (see broker.Client). When connected, it
// returns once the broker has acknowledged the subscription
// (ErrSubscribeRefused if it refused it). When the broker is away, or the
// connection fails before the acknowledgement, it registers the
// subscription and returns nil: the subscription is sent with every
// (re)connect, before Ready reports true. Errors: broker.ErrInvalidTopic,
// ErrBadQoS, ErrNilHandler, broker.ErrClosed, ErrSubscribeRefused, or the
// ctx error (the subscription is then withdrawn).
//
// With overlapping filters on one client, each handler receives each
// matching message the broker sends: Mosquitto sends one copy to a 3.1.1
// client, at the highest QoS of the matching subscriptions, and the client
// hands it to every matching handler with the QoS lowered to that
// handler's subscription QoS. Brokers that send a copy per subscription
// cause duplicates (QoS 1 is at-least-once anyway). A retained message sent
// for one subscription also reaches the other matching handlers of the
// client (with Retain set).
//
// The unsubscribe function is idempotent and returns nil after Close.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h broker.Handler) (func(context.Context) error, error) {
	if qos > 2 {
		return nil, fmt.Errorf("external: subscribe %q: %w", filter, ErrBadQoS)
	}
	levels, err := parseFilter(filter)
	if err != nil {
		return nil, fmt.Errorf("external: subscribe %q: %w", filter, err)
	}
	if h == nil {
		return nil, fmt.Errorf("external: subscribe %q: %w", filter, ErrNilHandler)
	}
	s := &subscription{
		c:      c,
		filter: filter,
		levels: levels,
		qos:    qos,
		h:      h,
		queue:  make(chan broker.Message, c.cfg.QueueSize),
		done:   make(chan struct{}),
	}

	c.subMu.Lock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.subMu.Unlock()
		return nil, broker.ErrClosed
	}
	c.subs[s] = struct{}{}
	refs := c.filters[filter]
	if refs == nil {
		refs = &filterRefs{}
		c.filters[filter] = refs
	}
	refs.byQoS[qos]++
	delete(c.stale, filter)
	maxQoS := refs.max()
	c.publishViewLocked()
	c.wg.Add(1)
	go s.deliver()
	pc := c.live
	c.mu.Unlock()
	var tok paho.Token
	if pc != nil {
		tok = pc.Subscribe(filter, maxQoS, nil)
	}
	c.subMu.Unlock()

	unsub := func(ctx context.Context) error { return c.unsubscribe(ctx, s) }
	if tok == nil {
		return unsub, nil
	}
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// Withdraw it; the UNSUBSCRIBE is handed to paho but not waited for.
		_ = c.unsubscribe(ctx, s)
		return nil, fmt.Errorf("external: subscribe %q: %w", filter, ctx.Err())
	}
	if tok.Error() != nil {
		// Connection trouble: the subscription stays registered and is
		// sent again with the next connection.
		return unsub, nil
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code == 0x80 {
				c.forget(s)
				return nil, fmt.Errorf("external: subscribe %q: %w", filter, ErrSubscribeRefused)
			}
		}
	}
	return unsub, nil
}

// unsubscribe ends s; the broker is unsubscribed when s was the last local
// subscription of its filter.
func (c *Client) unsubscribe(ctx context.Context, s *subscription) error {
	c.subMu.Lock()
	last, ok := c.removeLocked(s)
	c.mu.Lock()
	pc, closed := c.live, c.closed
	c.mu.Unlock()
	var tok paho.Token
	if ok && last && pc != nil && !closed {
		tok = pc.Unsubscribe(s.filter)
	}
	c.subMu.Unlock()
	if ok && last && pc == nil && !closed {
		c.markStale(s.filter)
	}
	if tok == nil {
		return nil
	}
	select {
	case <-tok.Done():
		if tok.Error() != nil {
			// Connection trouble. The filter is no longer registered, so
			// the next connection does not subscribe it; a persistent
			// session still has it and is told then.
			c.markStale(s.filter)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("external: unsubscribe %q: %w", s.filter, ctx.Err())
	}
}

// markStale remembers, for a persistent session, a filter the broker may
// still hold for us although no local subscription wants it any more.
func (c *Client) markStale(filter string) {
	if !c.cfg.PersistentSession {
		return // a clean session forgets it by itself
	}
	c.mu.Lock()
	if _, again := c.filters[filter]; !again {
		c.stale[filter] = struct{}{}
	}
	c.mu.Unlock()
}

// forget removes s without telling the broker (it refused the filter).
func (c *Client) forget(s *subscription) {
	c.subMu.Lock()
	c.removeLocked(s)
	c.subMu.Unlock()
}

// removeLocked removes s from the registry and stops its delivery. It
// reports whether s was the last subscription of its filter and whether it
// was still registered. c.subMu must be held; it takes c.mu.
func (c *Client) removeLocked(s *subscription) (last, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.subs[s]; !ok {
		return false, false
	}
	delete(c.subs, s)
	close(s.done)
	refs := c.filters[s.filter]
	refs.byQoS[s.qos]--
	if refs.total() == 0 {
		delete(c.filters, s.filter)
		last = true
	}
	c.publishViewLocked()
	return last, true
}

// publishViewLocked rebuilds the router's snapshot. c.mu must be held.
func (c *Client) publishViewLocked() {
	v := make([]*subscription, 0, len(c.subs))
	for s := range c.subs {
		v = append(v, s)
	}
	c.view.Store(&v)
}

// route is paho's default publish handler, called on paho's router
// goroutine for every incoming message. It never blocks: each matching
// subscription gets the message through a non-blocking send to its queue.
//
// It acknowledges the message (PUBACK, PUBREC) first, before the hand-off,
// where paho would do it right after route returns: the acknowledgement
// does not depend on the handler either way, and paho's message acks only
// once. The order matters for latency. A hand-off to a waiting goroutine
// makes it the next to run here, and the last hand-off wins that place:
// had paho's ack hand-off come last, the whole acknowledgement (three
// goroutines and a write) would run before the handler. Measured, that was
// most of the extra publish → handler latency of QoS 1 over a handler that
// paho calls inline.
func (c *Client) route(_ paho.Client, pm paho.Message) {
	pm.Ack()
	v := c.view.Load()
	if v == nil {
		return
	}
	m := broker.Message{Topic: pm.Topic(), Payload: pm.Payload(), QoS: pm.Qos(), Retain: pm.Retained()}
	for _, s := range *v {
		if match(s.levels, m.Topic) {
			s.offer(m)
		}
	}
}

// Close flushes the offline buffer if the broker is connected (bounded by
// ctx), disconnects cleanly (the broker does not publish the will), stops
// the subscriptions and waits for every goroutine of the client. No handler
// runs after it returns nil. It is idempotent; concurrent calls all wait. It
// must not be called from a Handler or OnConnect (it would wait for itself
// until ctx ends).
func (c *Client) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		close(c.closing)
		ready, idle, down := c.ready, c.idleCh, c.downCh
		c.mu.Unlock()
		if ready {
			// Let publishes in flight be acknowledged and send what was
			// promised from the buffer, while the connection lasts and
			// until ctx.
			quiet := make(chan struct{})
			c.wg.Add(1)
			go func() { // ends when the in-flight publishes have (at the latest when cancel below drops the connection)
				defer c.wg.Done()
				c.inflight.Wait()
				if idle != nil {
					select {
					case <-idle:
					case <-down:
					}
				}
				close(quiet)
			}()
			select {
			case <-quiet:
			case <-down:
			case <-ctx.Done():
			}
		}
		c.cancel()
		c.mu.Lock()
		for s := range c.subs {
			close(s.done)
		}
		clear(c.subs)
		clear(c.filters)
		c.publishViewLocked()
		c.mu.Unlock()
		// Owned by Close: ends when the client's goroutines have.
		go func() {
			c.wg.Wait()
			c.mu.Lock()
			lost := c.out.clear()
			c.mu.Unlock()
			if lost > 0 {
				c.nLost.Add(uint64(lost))
				c.log.Warn("closed with undelivered buffered messages", "lost", lost)
			}
			close(c.done)
		}()
	})
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("external: close: %w", ctx.Err())
	}
}
