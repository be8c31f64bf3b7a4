package coapdev

import (
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// reqKind names what a pending request is, for matching and logs.
type reqKind uint8

const (
	reqDescribe reqKind = iota + 1
	reqCall
	reqGet
	reqSignal
	reqPing
)

func (k reqKind) String() string {
	switch k {
	case reqDescribe:
		return "describe"
	case reqCall:
		return "call"
	case reqGet:
		return "get"
	case reqSignal:
		return "signal"
	case reqPing:
		return "ping"
	}
	return "request"
}

// pending is one request sent to the device and not answered yet.
type pending struct {
	// Immutable after registration.
	kind  reqKind
	token byte   // 1..255; 0 for a ping (an empty message has no token)
	id    uint16 // our message id
	done  func(result)
	// Guarded by Session.mu.
	acked bool        // an empty ACK came; a separate response follows
	timer *time.Timer // the timeout of an asynchronous request, or nil
}

// finish stops p's timer and hands it its result. Call it once, after
// removing p from the table, without holding Session.mu.
func (p *pending) finish(r result) {
	if p.timer != nil {
		p.timer.Stop()
	}
	p.done(r)
}

// result is the answer to a pending request: a response code and a copy of
// its payload, or an error.
type result struct {
	code    msg.Code
	payload []byte
	err     error
}

// tokenStatus is what a token means when a response carries it.
type tokenStatus uint8

const (
	tokenUnknown tokenStatus = iota // never used, or already answered
	tokenPending                    // a request waits for it
	tokenLate                       // its request timed out: quarantined
)

// quarEntry is a token freed by a timeout, unusable until until (unix ns).
type quarEntry struct {
	tok   byte
	until int64
}

// tokenTable allocates the 1-byte tokens of S→D requests and matches
// responses to requests (spark-protocol.md §4.2 "Tokens", §5 "Duplicate or
// late responses"). Tokens go round-robin over 1..255, a token still
// pending is never reused, and a token whose request timed out is
// quarantined for a while, so that a late answer is counted as late instead
// of answering a newer request. It is small when idle (no per-token array):
// two 32-byte bitmaps and two short slices.
//
// Guarded by Session.mu.
type tokenTable struct {
	next       byte        // the last token handed out
	inUse      [4]uint64   // bitmap of pending tokens
	quar       [4]uint64   // bitmap of quarantined tokens
	quarantine []quarEntry // in expiry order (one quarantine length per session)
	active     []*pending  // pending requests, pings included
}

func bit(set *[4]uint64, tok byte) bool { return set[tok>>6]&(1<<(tok&63)) != 0 }
func setBit(set *[4]uint64, tok byte)   { set[tok>>6] |= 1 << (tok & 63) }
func clearBit(set *[4]uint64, tok byte) { set[tok>>6] &^= 1 << (tok & 63) }

// alloc returns the next free token, or false when all 255 are pending or
// quarantined.
func (t *tokenTable) alloc(now int64) (byte, bool) {
	t.expire(now)
	for range 255 {
		t.next++
		if t.next == 0 {
			t.next = 1
		}
		if !bit(&t.inUse, t.next) && !bit(&t.quar, t.next) {
			setBit(&t.inUse, t.next)
			return t.next, true
		}
	}
	return 0, false
}

// expire ends the quarantine of tokens whose time is up.
func (t *tokenTable) expire(now int64) {
	n := 0
	for n < len(t.quarantine) && t.quarantine[n].until <= now {
		clearBit(&t.quar, t.quarantine[n].tok)
		n++
	}
	if n > 0 {
		t.quarantine = append(t.quarantine[:0], t.quarantine[n:]...)
		if len(t.quarantine) == 0 && cap(t.quarantine) > 16 {
			t.quarantine = nil
		}
	}
}

// add registers p, whose token came from alloc (or is 0 for a ping).
func (t *tokenTable) add(p *pending) { t.active = append(t.active, p) }

// byToken finds the pending request with token tok.
func (t *tokenTable) byToken(tok byte, now int64) (*pending, tokenStatus) {
	if tok != 0 && bit(&t.inUse, tok) {
		for _, p := range t.active {
			if p.token == tok {
				return p, tokenPending
			}
		}
	}
	t.expire(now)
	if bit(&t.quar, tok) {
		return nil, tokenLate
	}
	return nil, tokenUnknown
}

// byID finds the pending request sent with message id id.
func (t *tokenTable) byID(id uint16) *pending {
	for _, p := range t.active {
		if p.id == id {
			return p
		}
	}
	return nil
}

// ping returns the pending ping, if any.
func (t *tokenTable) ping() *pending {
	for _, p := range t.active {
		if p.kind == reqPing {
			return p
		}
	}
	return nil
}

// remove unregisters p and frees its token; with quarantineUntil > 0 the
// token stays unusable until then. It reports false when p was no longer
// registered (it was answered or removed already).
func (t *tokenTable) remove(p *pending, quarantineUntil int64) bool {
	for i, q := range t.active {
		if q != p {
			continue
		}
		last := len(t.active) - 1
		t.active[i] = t.active[last]
		t.active[last] = nil
		t.active = t.active[:last]
		if len(t.active) == 0 && cap(t.active) > 16 {
			t.active = nil
		}
		if p.token != 0 {
			clearBit(&t.inUse, p.token)
			if quarantineUntil > 0 {
				setBit(&t.quar, p.token)
				t.quarantine = append(t.quarantine, quarEntry{p.token, quarantineUntil})
			}
		}
		return true
	}
	return false
}

// drain unregisters and returns every pending request.
func (t *tokenTable) drain() []*pending {
	all := t.active
	t.active = nil
	t.inUse = [4]uint64{}
	return all
}
