package external

import (
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// dropWarnEvery rate-limits the "queue full" warning of one subscription.
const dropWarnEvery = 10 * time.Second

// subscription is one Subscribe call: a filter, a handler and the bounded
// queue between paho's router goroutine and the delivery goroutine that
// calls the handler.
type subscription struct {
	// Immutable after Subscribe.
	c      *Client
	filter string
	levels []string // what topics are matched against (the filter part of $share/...)
	qos    byte
	h      broker.Handler

	// queue is full → the message is dropped and counted (the handler is
	// slow; paho's goroutine must never wait). Never closed.
	queue chan broker.Message
	// done is closed (under c.mu, once) when the subscription ends.
	done chan struct{}

	dropped  atomic.Uint64
	warnedAt atomic.Int64 // unix nanoseconds of the last drop warning
}

// offer hands m to the delivery goroutine without blocking. m.QoS is
// lowered to the subscription's QoS, as the broker would for a subscription
// of its own.
func (s *subscription) offer(m broker.Message) {
	if m.QoS > s.qos {
		m.QoS = s.qos
	}
	select {
	case s.queue <- m:
		return
	default:
	}
	n := s.dropped.Add(1)
	s.c.nDropped.Add(1)
	now := time.Now().UnixNano()
	if last := s.warnedAt.Load(); now-last >= int64(dropWarnEvery) && s.warnedAt.CompareAndSwap(last, now) {
		s.c.log.Warn("subscription queue full, dropping messages (slow handler)",
			"filter", s.filter, "topic", m.Topic, "dropped", n, "queue", cap(s.queue))
	}
}

// deliver calls the handler for each queued message until the subscription
// ends. It is the subscription's goroutine, counted in c.wg.
func (s *subscription) deliver() {
	defer s.c.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case m := <-s.queue:
			select {
			case <-s.done:
				return
			default:
			}
			s.h(m)
		}
	}
}
