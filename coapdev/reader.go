package coapdev

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// readLoop reads and routes device frames until an error. Every read has
// the idle deadline (spark-protocol.md §5), moved on by the frames: at most
// once per IdleTimeout/8, as moving it costs a syscall and a timer update,
// more than the rest of reading an event; so a silent device is closed
// after 7/8 to all of IdleTimeout.
func (s *Session) readLoop() error {
	idle := s.srv.cfg.IdleTimeout
	set := time.Now() // when the deadline was last moved
	if err := s.conn.SetReadDeadline(set.Add(idle)); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	for {
		p, err := s.fr.next()
		if err != nil {
			return readErr(err)
		}
		now := time.Now()
		s.lastRx.Store(now.UnixNano())
		if err := s.handleFrame(p); err != nil {
			return err
		}
		if now.Sub(set) >= idle/8 {
			if err := s.conn.SetReadDeadline(now.Add(idle)); err != nil {
				return fmt.Errorf("read: %w", err)
			}
			set = now
		}
	}
}

// readErr marks a read timeout as the idle timeout.
func readErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", errIdle, err)
	}
	return err
}

// handleFrame decodes and routes one frame's plaintext.
func (s *Session) handleFrame(p []byte) error {
	if len(p) == 1 {
		// The Photon keep-alive 0x00 is not CoAP (§4.4 "Ping"); it only
		// refreshes the deadline.
		return nil
	}
	m, err := msg.Decode(p)
	if err != nil {
		// §7.1: never act on what does not validate; without a MAC,
		// garbage means tampering or a lost IV chain.
		return err
	}
	return s.route(m)
}

// route handles one device message (spark-protocol.md §4.3). m aliases the
// frame reader's buffer: whatever outlives this call is copied.
func (s *Session) route(m msg.Message) error {
	if s.log.Enabled(s.ctx, slog.LevelDebug) {
		s.log.Debug("message in", "type", m.Type.String(), "code", m.Code.String(),
			"id", m.ID, "token", hex.EncodeToString(m.Token), "kind", m.Kind().String())
	}
	switch m.Type {
	case msg.Acknowledgement:
		return s.handleAck(m)
	case msg.Reset:
		s.handleReset(m)
		return nil
	}

	if m.Code == msg.Empty {
		if m.Type != msg.Confirmable {
			return nil // a NON empty message means nothing
		}
		// A ping (§4.4): empty ACK with its id. Its id is not checked (the
		// reference does not either, §4.2), but advances the counter when
		// it is the next one, as the firmware's are.
		if m.ID == s.recv+1 {
			s.recv = m.ID
		}
		return s.reply(m, msg.NewEmptyAck(m.ID))
	}

	// §4.2, §7.10: the counter check, the only replay/reorder protection.
	switch m.ID {
	case s.recv + 1:
		s.recv = m.ID
	case s.recv:
		s.srv.stats.duplicates.Add(1)
		s.log.Debug("duplicate message", "id", m.ID)
		if m.Type != msg.Confirmable {
			return nil
		}
		if s.lastReply != nil && s.lastReplyID == m.ID {
			return s.enqueue(s.ctx, s.lastReply)
		}
		return s.enqueue(s.ctx, mustEncode(msg.NewEmptyAck(m.ID)))
	default:
		return fmt.Errorf("%w: message id %#04x, want %#04x", errProtocol, m.ID, s.recv+1)
	}

	if m.Code.IsResponse() {
		// A separate response (§4.3 step 6): matched by token.
		s.complete(m)
		return s.ack(m)
	}

	switch m.Kind() {
	case msg.KindEvent:
		return s.handleEvent(m)
	case msg.KindSubscribe:
		return s.handleSubscribe(m)
	case msg.KindGetTime:
		now := s.srv.cfg.Now()
		return s.reply(m, msg.NewTimeResponse(m.ID, m.Token, uint32(now.Unix())))
	case msg.KindDescribePost:
		// Newer Device OS pushes its description (§4.4).
		s.describePushed(m.Payload)
		return s.ack(m)
	case msg.KindGoodbye:
		s.log.Debug("device said goodbye")
		return s.ack(m)
	}
	// Unknown or unsupported (OTA, a second Hello, POST z, …): an empty
	// ACK to a CON so the device does not wait, never a 4.xx, which a 0.7
	// Photon answers by dropping the connection (§5, §6).
	s.srv.stats.unknownRequests.Add(1)
	s.log.Debug("unknown request", "code", m.Code.String(), "path", m.Path)
	return s.ack(m)
}

// handleAck routes an ACK: an empty one (a plain ACK of our CON before its
// separate response, or a ping answer) or a piggybacked response matched by
// token (§4.3 step 2).
//
// Photon ≥ 0.8 answers Signal and our ping with an ACK that carries its own
// NEXT message id and uses it up (§4.2, session_fixture_photon08.json): an
// ACK whose id is not the request's but is the next device id advances the
// counter. A piggybacked response with any other foreign id is refused.
func (s *Session) handleAck(m msg.Message) error {
	now := time.Now().UnixNano()
	if m.Code == msg.Empty {
		s.mu.Lock()
		p := s.tokens.byID(m.ID)
		if p == nil && m.ID == s.recv+1 {
			s.recv = m.ID // a 0.8 ACK that used up a device id
			p = s.tokens.ping()
		}
		switch {
		case p == nil:
			s.mu.Unlock()
			s.srv.stats.unknownAcks.Add(1)
			s.log.Debug("unmatched empty ack", "id", m.ID)
			return nil
		case p.kind == reqPing:
			s.tokens.remove(p, 0)
			s.mu.Unlock()
			p.finish(result{})
			return nil
		}
		p.acked = true
		s.mu.Unlock()
		return nil
	}

	if len(m.Token) != 1 {
		if m.ID == s.recv+1 {
			s.recv = m.ID
		}
		s.srv.stats.unknownTokens.Add(1)
		s.log.Debug("response without a 1-byte token", "id", m.ID, "token", m.Token)
		return nil
	}
	s.mu.Lock()
	p, st := s.tokens.byToken(m.Token[0], now)
	if p != nil && m.ID != p.id {
		if m.ID != s.recv+1 {
			s.mu.Unlock()
			return fmt.Errorf("%w: ack id %#04x answers request %#04x, want it or %#04x",
				errProtocol, m.ID, p.id, s.recv+1)
		}
		s.recv = m.ID
	}
	if p == nil {
		if m.ID == s.recv+1 {
			s.recv = m.ID
		}
		s.mu.Unlock()
		s.dropResponse(m, st)
		return nil
	}
	s.tokens.remove(p, 0)
	s.mu.Unlock()
	p.finish(result{code: m.Code, payload: clone(m.Payload)})
	return nil
}

// complete matches a separate response to its request by token.
func (s *Session) complete(m msg.Message) {
	if len(m.Token) != 1 {
		s.srv.stats.unknownTokens.Add(1)
		s.log.Debug("response without a 1-byte token", "id", m.ID, "token", m.Token)
		return
	}
	s.mu.Lock()
	p, st := s.tokens.byToken(m.Token[0], time.Now().UnixNano())
	if p != nil {
		s.tokens.remove(p, 0)
	}
	s.mu.Unlock()
	if p == nil {
		s.dropResponse(m, st)
		return
	}
	p.finish(result{code: m.Code, payload: clone(m.Payload)})
}

// dropResponse counts a response that matches no pending request.
func (s *Session) dropResponse(m msg.Message, st tokenStatus) {
	if st == tokenLate {
		s.srv.stats.lateResponses.Add(1)
		s.log.Debug("late response", "id", m.ID, "token", m.Token[0], "code", m.Code.String())
		return
	}
	s.srv.stats.unknownTokens.Add(1)
	s.log.Debug("response with unknown token", "id", m.ID, "token", m.Token[0], "code", m.Code.String())
}

// handleReset fails the request sent with the reset's message id (§4.3
// step 3). A reset answers a ping as well as an ACK does.
func (s *Session) handleReset(m msg.Message) {
	s.mu.Lock()
	p := s.tokens.byID(m.ID)
	if p != nil {
		s.tokens.remove(p, 0)
	}
	s.mu.Unlock()
	switch {
	case p == nil:
		s.srv.stats.unknownAcks.Add(1)
		s.log.Debug("unmatched reset", "id", m.ID)
	case p.kind == reqPing:
		p.finish(result{})
	default:
		p.finish(result{err: ErrReset})
	}
}

// handleEvent delivers a device event (§4.4) and ACKs a CON one with an
// empty ACK. A NON event gets nothing (RFC 7252; the device ignores ACKs
// to NON, and the recorded sessions answer none), and no event ever gets a
// 4.00, which drops a 0.7 Photon (§5).
func (s *Session) handleEvent(m msg.Message) error {
	e, err := msg.ParseEvent(m)
	if err != nil {
		s.srv.stats.badEvents.Add(1)
		s.log.Debug("bad event", "err", err)
		return s.ack(m)
	}
	e.Data = clone(e.Data)
	s.srv.stats.events.Add(1)
	if s.log.Enabled(s.ctx, slog.LevelDebug) { // the arguments would allocate even when disabled
		s.log.Debug("event", "event", e.Name, "ttl", e.TTL, "private", e.Private)
	}
	if err := s.ack(m); err != nil {
		return err
	}
	s.deliver(item{kind: itemEvent, ev: e})
	if !IsSystemEvent(e.Name) {
		s.requestDescribe(true) // the application runs (§2.4)
	}
	return nil
}

// handleSubscribe records a Subscribe and answers with an empty ACK. A
// refused one (the firehose, a bad device id, over maxSubscriptions) is
// not recorded and gets an empty ACK too: 4.00 would drop a 0.7 Photon
// (§5), and the empty ACK keeps the device from retrying.
func (s *Session) handleSubscribe(m msg.Message) error {
	sub, err := msg.ParseSubscribe(m)
	if err == nil {
		// The read loop is the only writer of s.subs: what it finds here
		// still holds after the unlock.
		s.mu.Lock()
		added := false
		switch {
		case slices.Contains(s.subs, sub):
		case len(s.subs) >= maxSubscriptions:
			err = errors.New("too many subscriptions")
		default:
			added = true
		}
		s.mu.Unlock()
		if added {
			if sh, ok := s.srv.cfg.Handler.(SubscribeHandler); ok {
				sh.Subscribed(s, sub) // before anyone can see it (SubscribeHandler)
			}
			s.mu.Lock()
			s.subs = append(s.subs, sub)
			s.mu.Unlock()
		}
	}
	if err != nil {
		s.srv.stats.refusedSubs.Add(1)
		s.log.Debug("subscribe refused", "err", err)
	} else {
		s.log.Debug("subscribe", "event", sub.Prefix, "mine", sub.MineOnly)
	}
	if rerr := s.reply(m, msg.NewEmptyAck(m.ID)); rerr != nil {
		return rerr
	}
	if err == nil && !IsSystemEvent(sub.Prefix) {
		s.requestDescribe(true) // the application runs (§2.4)
	}
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

func mustEncode(m msg.Message) []byte {
	b, err := m.Encode()
	if err != nil {
		panic("coapdev: " + err.Error()) // fixed small messages: cannot happen
	}
	return b
}
