package embedded

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Client is an in-process broker.Client of a Broker: it publishes into the
// broker and subscribes through mochi's inline subscriptions, with no socket
// in between. Get one with Broker.NewClient. It is safe for concurrent use.
//
// Mochi calls inline subscription handlers on the publisher's goroutine
// (a network client's read loop, or whoever called Publish). So every
// subscription has a bounded hand-off queue: mochi's callback only appends
// to it, and a delivery goroutine, started when the queue becomes non-empty
// and ended when it drains, calls the Handler. When a handler falls
// QueueSize messages behind, the oldest queued message is dropped and
// counted (Dropped). An idle subscription costs no goroutine.
type Client struct {
	b *Broker

	// dropped counts messages dropped by this client's hand-off queues.
	dropped atomic.Uint64
	// wg counts running delivery goroutines of this client's subscriptions.
	wg sync.WaitGroup

	// Guarded by mu.
	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
}

// subscription is one Subscribe call's registration.
type subscription struct {
	// Immutable after Subscribe.
	c      *Client
	id     int
	filter string
	qos    byte
	h      broker.Handler

	// Guarded by mu. Lock order: Client.mu before subscription.mu.
	mu      sync.Mutex
	q       []broker.Message // FIFO, at most QueueSize; full: drop the oldest
	running bool             // a delivery goroutine owns the queue's head
	closed  bool
}

// NewClient returns a new in-process Client. Each Client has its own
// subscriptions and its own Close; all of them share the broker, and none
// has a will (see Config.Will).
func (b *Broker) NewClient() *Client {
	return &Client{b: b, subs: map[*subscription]struct{}{}}
}

// Dropped reports how many messages this Client's subscriptions have
// dropped because their handler fell QueueSize messages behind.
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// Publish publishes m into the broker. It returns once every subscriber's
// queue has it (QoS has no further meaning in-process; subscribers receive
// the smaller of m.QoS and their subscription's QoS). The payload and
// correlation data are copied. Errors: broker.ErrInvalidTopic,
// broker.ErrTooLarge (the encoded PUBLISH over MaxPacketSize),
// ErrInvalidQoS, broker.ErrClosed after Close of the Client or the Broker,
// and ctx's error.
func (c *Client) Publish(ctx context.Context, m broker.Message) error {
	if c.isClosed() {
		return broker.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("embedded: publish: %w", err)
	}
	if err := c.b.check(m); err != nil {
		return err
	}
	return c.b.inject(m)
}

// Subscribe registers h for messages matching filter. It returns once the
// subscription is active, with the retained messages matching filter
// already queued for h (Retain set on those only). Errors:
// broker.ErrInvalidTopic, ErrInvalidQoS, broker.ErrClosed.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h broker.Handler) (func(context.Context) error, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded: subscribe: %w", err)
	}
	if !validFilter(filter) {
		return nil, fmt.Errorf("embedded: subscribe %q: %w", filter, broker.ErrInvalidTopic)
	}
	if qos > 2 {
		return nil, fmt.Errorf("embedded: subscribe qos %d: %w", qos, ErrInvalidQoS)
	}
	if h == nil {
		return nil, fmt.Errorf("embedded: subscribe %q: nil handler", filter)
	}
	s := &subscription{c: c, id: int(c.b.nextSubID.Add(1)), filter: filter, qos: qos, h: h}

	c.mu.Lock()
	if c.closed || c.b.isClosed() {
		c.mu.Unlock()
		return nil, broker.ErrClosed
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()

	// Hold s.mu while the subscription goes live and the retained messages
	// are queued: a concurrent live publish waits in s.handle, so it is
	// queued after the retained value it replaces, never before.
	s.mu.Lock()
	for _, f := range s.filters() {
		c.b.srv.Topics.InlineSubscribe(mqtt.InlineSubscription{
			Subscription: packets.Subscription{Filter: f, Identifier: s.id, Qos: qos},
			Handler:      s.handle,
		})
	}
	if s.closed { // Close ran meanwhile and could not unregister us yet.
		s.mu.Unlock()
		s.unregister()
		return nil, broker.ErrClosed
	}
	seen := map[string]bool{}
	for _, f := range s.filters() {
		for _, pk := range c.b.retained(f) {
			if !seen[pk.TopicName] {
				seen[pk.TopicName] = true
				s.enqueueLocked(message(pk, qos, true))
			}
		}
	}
	s.mu.Unlock()

	return s.unsubscribe, nil
}

// Close ends the Client's subscriptions and waits, up to ctx, for their
// handlers to return; no handler is called after Close returns nil. It does
// not publish Config.Will and does not stop the Broker. Idempotent.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	subs := c.subs
	c.subs = nil
	c.mu.Unlock()
	for s := range subs {
		s.close()
	}
	done := make(chan struct{})
	go func() { // ends when the delivery goroutines do; owned by this call
		c.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded: close: handlers still running: %w", ctx.Err())
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed || c.b.isClosed()
}

// unsubscribe stops deliveries to the handler: no call starts after it
// returns (one already running finishes). It does not wait for that call,
// so a handler may unsubscribe itself. Repeated calls return nil.
func (s *subscription) unsubscribe(context.Context) error {
	s.close()
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	return nil
}

func (s *subscription) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.q = nil
	s.mu.Unlock()
	s.unregister()
}

// filters returns what s registers in mochi's index. mochi (v2.7.9) does
// not match an inline "a/#" against "a", nor "a/+/#" against "a/b", as
// [MQTT-4.7.1-2] requires ('#' includes the parent level); so a filter
// ending in "/#" also registers its parent, under the same identifier:
// mochi gathers inline subscribers in a map keyed by identifier, so a
// message matching both is still delivered once.
func (s *subscription) filters() []string {
	if parent, ok := strings.CutSuffix(s.filter, "/#"); ok {
		return []string{s.filter, parent}
	}
	return []string{s.filter}
}

func (s *subscription) unregister() {
	for _, f := range s.filters() {
		s.c.b.srv.Topics.InlineUnsubscribe(s.id, f)
	}
}

// handle is the mochi inline callback. It runs on the publisher's goroutine
// and must not block: it only queues.
func (s *subscription) handle(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	m := message(pk, s.qos, false)
	s.mu.Lock()
	s.enqueueLocked(m)
	s.mu.Unlock()
}

func (s *subscription) enqueueLocked(m broker.Message) {
	if s.closed {
		return
	}
	if len(s.q) >= s.c.b.cfg.QueueSize {
		s.q[0] = broker.Message{}
		s.q = s.q[1:]
		s.c.dropped.Add(1)
		s.c.b.dropped.Add(1)
	}
	s.q = append(s.q, m)
	if !s.running {
		s.running = true
		s.c.wg.Add(1)
		go s.deliver() // ends when the queue drains or s closes; waited for by Client.Close
	}
}

// deliver calls the handler for each queued message, in order, until the
// queue is empty or the subscription closed.
func (s *subscription) deliver() {
	defer s.c.wg.Done()
	for {
		s.mu.Lock()
		if s.closed || len(s.q) == 0 {
			s.running = false
			if cap(s.q) > 64 {
				s.q = nil // an idle subscription keeps no big buffer
			}
			s.mu.Unlock()
			return
		}
		m := s.q[0]
		s.q[0] = broker.Message{}
		s.q = s.q[1:]
		s.mu.Unlock()
		s.h(m)
	}
}

// message converts a mochi packet for a handler. The payload is shared with
// the broker and other subscriptions (read-only); mochi decodes every
// network packet into a fresh buffer and Publish copies, so nothing reuses it.
func message(pk packets.Packet, subQoS byte, retained bool) broker.Message {
	qos := min(pk.FixedHeader.Qos, subQoS)
	return broker.Message{
		Topic:           pk.TopicName,
		Payload:         pk.Payload,
		QoS:             qos,
		Retain:          retained,
		ResponseTopic:   pk.Properties.ResponseTopic,
		CorrelationData: pk.Properties.CorrelationData,
	}
}

// check validates an outbound message.
func (b *Broker) check(m broker.Message) error {
	if !validTopic(m.Topic) {
		return fmt.Errorf("embedded: publish %q: %w", m.Topic, broker.ErrInvalidTopic)
	}
	if m.QoS > 2 {
		return fmt.Errorf("embedded: publish qos %d: %w", m.QoS, ErrInvalidQoS)
	}
	if m.ResponseTopic != "" && !validTopic(m.ResponseTopic) {
		return fmt.Errorf("embedded: publish response topic %q: %w", m.ResponseTopic, broker.ErrInvalidTopic)
	}
	if n := publishSize(m.Topic, len(m.Payload), m.QoS, m.ResponseTopic, len(m.CorrelationData)); n > b.cfg.MaxPacketSize {
		return fmt.Errorf("embedded: publish %q: %d bytes over %d: %w", m.Topic, n, b.cfg.MaxPacketSize, broker.ErrTooLarge)
	}
	return nil
}

// inject publishes a checked message through the broker's inline client.
func (b *Broker) inject(m broker.Message) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     bytes.Clone(m.Payload),
		Properties: packets.Properties{
			ResponseTopic:   m.ResponseTopic,
			CorrelationData: bytes.Clone(m.CorrelationData),
		},
		// mochi validates QoS > 0 packets for an id; the inline client
		// never gets acks, so any non-zero id will do.
		PacketID: uint16(m.QoS),
	}
	if pk.Payload == nil {
		pk.Payload = []byte{}
	}

	b.pubMu.RLock() // Close waits for publishes under way
	defer b.pubMu.RUnlock()
	if b.closed.Load() {
		return broker.ErrClosed
	}
	if err := b.srv.InjectPacket(b.inline, pk); err != nil {
		return fmt.Errorf("embedded: publish %q: %w", m.Topic, err)
	}
	return nil
}
