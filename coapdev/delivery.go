package coapdev

import (
	"sync"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

type itemKind uint8

const (
	itemStarted itemKind = iota + 1
	itemEvent
	itemDescribed
	itemEnded
)

// item is one Handler call waiting for delivery.
type item struct {
	kind itemKind
	ev   msg.Event
	desc msg.Description
	err  error
}

// delivery is a session's queue of Handler calls (STYLE.md §3.5–3.6). The
// session pushes without blocking; a goroutine, started when the queue goes
// from empty to non-empty and ending when it is empty again, calls the
// Handler in order. Full-queue policy: past Config.HandlerQueue events the
// oldest event is dropped and counted; started, described and ended items
// are never dropped (there are at most a few per session).
type delivery struct {
	mu sync.Mutex
	// Guarded by mu.
	q       []item  // FIFO; starts on one, so a lone event needs no allocation
	one     [1]item // q's first backing array
	events  int     // items of kind itemEvent in q
	running bool    // a drain goroutine runs; it alone pops
	closed  bool    // itemEnded was pushed; later pushes are ignored
	// ended is closed by the drain goroutine once SessionEnded returned.
	ended chan struct{}
}

// deliver queues a Handler call for s. It never blocks (but for the time a
// QuickEventHandler's Event takes, which it calls itself when nothing is
// queued before the event).
func (s *Session) deliver(it item) {
	d := &s.dlv
	d.mu.Lock()
	if it.kind == itemEvent && s.srv.quickEvents && !d.closed && !d.running {
		// Nothing is queued (the queue is only non-empty while a drain
		// runs): call the handler here, marked as running so that calls
		// coming meanwhile queue behind this one.
		d.running = true
		d.mu.Unlock()
		s.srv.cfg.Handler.Event(s, it.ev)
		d.mu.Lock()
		if len(d.q) == 0 {
			d.running = false
		} else {
			s.srv.deliveries.Go(s.drain) // what came meanwhile, in order; running stays set
		}
		d.mu.Unlock()
		return
	}
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if it.kind == itemEvent {
		if d.events >= s.srv.cfg.HandlerQueue {
			for i := range d.q {
				if d.q[i].kind == itemEvent {
					d.q = append(d.q[:i], d.q[i+1:]...)
					d.events--
					break
				}
			}
			s.srv.stats.eventsDropped.Add(1)
		}
		d.events++
	}
	if it.kind == itemEnded {
		d.closed = true
	}
	d.q = append(d.q, it)
	if !d.running {
		d.running = true
		// Waited for by Serve (srv.deliveries); it returns when the queue
		// is empty.
		s.srv.deliveries.Go(s.drain)
	}
}

// drain calls the Handler for queued items until the queue is empty.
func (s *Session) drain() {
	d := &s.dlv
	h := s.srv.cfg.Handler
	for {
		d.mu.Lock()
		if len(d.q) == 0 {
			d.running = false
			d.q = d.one[:0] // an idle session keeps no other queue memory
			d.mu.Unlock()
			return
		}
		it := d.q[0]
		d.q[0] = item{}
		d.q = d.q[1:]
		if it.kind == itemEvent {
			d.events--
		}
		d.mu.Unlock()

		switch it.kind {
		case itemStarted:
			h.SessionStarted(s)
		case itemEvent:
			h.Event(s, it.ev)
		case itemDescribed:
			if dh, ok := h.(DescribeHandler); ok {
				dh.Described(s, it.desc)
			}
		case itemEnded:
			h.SessionEnded(s, it.err)
			close(d.ended)
		}
	}
}
