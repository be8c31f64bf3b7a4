package coapdev

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// register allocates a token (none for a ping) and a message id, builds
// the request and records it as pending. On error nothing is registered.
func (s *Session) register(kind reqKind, build func(id uint16, tok byte) msg.Message, done func(result)) (*pending, []byte, error) {
	if s.ctx.Err() != nil {
		return nil, nil, s.closedErr()
	}
	s.mu.Lock()
	var tok byte
	if kind != reqPing {
		t, ok := s.tokens.alloc(time.Now().UnixNano())
		if !ok {
			s.mu.Unlock()
			return nil, nil, ErrBusy
		}
		tok = t
	}
	s.nextID++
	p := &pending{kind: kind, token: tok, id: s.nextID, done: done}
	s.tokens.add(p)
	s.mu.Unlock()
	b, err := s.encode(build(p.id, tok))
	if err != nil {
		s.forget(p, false)
		return nil, nil, err
	}
	return p, b, nil
}

// forget unregisters p. With quarantine its token stays unusable for
// RequestTimeout, so that a late answer is recognised as late and never
// answers a newer request (spark-protocol.md §5). It reports false if p was
// answered (or failed) meanwhile.
func (s *Session) forget(p *pending, quarantine bool) bool {
	var until int64
	if quarantine {
		until = time.Now().Add(s.srv.cfg.RequestTimeout).UnixNano()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens.remove(p, until)
}

// roundTrip sends a request and waits for its answer, its timeout or ctx.
// The result's err is set for a reset or a closed session; response codes
// are the caller's to judge.
func (s *Session) roundTrip(ctx context.Context, kind reqKind, timeout time.Duration, build func(id uint16, tok byte) msg.Message) (result, error) {
	ch := make(chan result, 1)
	p, b, err := s.register(kind, build, func(r result) { ch <- r })
	if err != nil {
		return result{}, err
	}
	if err := s.enqueue(ctx, b); err != nil {
		s.forget(p, false) // never sent
		return result{}, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r, r.err
	case <-t.C:
		err = ErrTimeout
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if !s.forget(p, kind != reqPing) {
		r := <-ch // answered meanwhile: finish was called or is being called
		return r, r.err
	}
	return result{}, fmt.Errorf("coapdev: %s: %w", kind, err)
}

// Call calls the device function fn with arg and returns its int32 result
// (spark-protocol.md §4.4 FunctionCall). It blocks until the answer,
// RequestTimeout or ctx.
//
// A name missing from the description waits for the application Describe
// (at most Config.AppDescribeDelay after the Hello) and then for one new
// Describe before it is declared missing (spark-protocol.md §2.4).
//
// Errors: ErrNameTooLong or ErrArgTooLong before anything is sent (see
// Limits); ErrNotFound if fn is missing from the description after one
// new Describe; ErrTimeout; *ResponseError for a 4.xx/5.xx answer; ErrBusy;
// ErrClosed; ErrReset; an msg.ErrMalformed return value.
func (s *Session) Call(ctx context.Context, fn string, arg string) (int32, error) {
	if fn == "" || len(fn) > s.limits.Name {
		return 0, fmt.Errorf("%w: function %q (%d bytes, limit %d)", ErrNameTooLong, clip(fn), len(fn), s.limits.Name)
	}
	if len(arg) > s.limits.Arg {
		return 0, fmt.Errorf("%w: %d bytes, limit %d", ErrArgTooLong, len(arg), s.limits.Arg)
	}
	if _, err := s.lookup(ctx, func(d msg.Description) bool { return slices.Contains(d.Functions, fn) }); err != nil {
		return 0, fmt.Errorf("coapdev: call %s: %w", fn, err)
	}
	r, err := s.roundTrip(ctx, reqCall, s.srv.cfg.RequestTimeout, func(id uint16, tok byte) msg.Message {
		return msg.NewFunctionCall(id, tok, fn, []byte(arg))
	})
	if err != nil {
		return 0, err
	}
	if r.code.Class() != 2 {
		return 0, &ResponseError{Code: r.code}
	}
	v, err := msg.DecodeReturn(r.payload)
	if err != nil {
		return 0, fmt.Errorf("coapdev: call %s: %w", fn, err)
	}
	return v, nil
}

// Get reads the device variable name, decoded by the type of the latest
// description (spark-protocol.md §4.4 VariableRequest). Errors are those
// of Call (without ErrArgTooLong).
func (s *Session) Get(ctx context.Context, name string) (msg.Value, error) {
	if name == "" || len(name) > s.limits.Name {
		return msg.Value{}, fmt.Errorf("%w: variable %q (%d bytes, limit %d)", ErrNameTooLong, clip(name), len(name), s.limits.Name)
	}
	d, err := s.lookup(ctx, func(d msg.Description) bool { _, ok := d.Variables[name]; return ok })
	if err != nil {
		return msg.Value{}, fmt.Errorf("coapdev: get %s: %w", name, err)
	}
	r, err := s.roundTrip(ctx, reqGet, s.srv.cfg.RequestTimeout, func(id uint16, tok byte) msg.Message {
		return msg.NewVariableRequest(id, tok, name)
	})
	if err != nil {
		return msg.Value{}, err
	}
	if r.code.Class() != 2 {
		return msg.Value{}, &ResponseError{Code: r.code}
	}
	v, err := msg.DecodeValue(d.Variables[name], r.payload)
	if err != nil {
		return msg.Value{}, fmt.Errorf("coapdev: get %s: %w", name, err)
	}
	return v, nil
}

// Signal starts (on) or stops the device's rainbow LED signalling
// (spark-protocol.md §4.4 SignalStart/Stop). Errors as Call.
func (s *Session) Signal(ctx context.Context, on bool) error {
	r, err := s.roundTrip(ctx, reqSignal, s.srv.cfg.RequestTimeout, func(id uint16, tok byte) msg.Message {
		return msg.NewSignal(id, tok, on)
	})
	if err != nil {
		return err
	}
	if r.code.Class() != 2 {
		return &ResponseError{Code: r.code}
	}
	return nil
}

// Ping sends a CoAP ping (CON 0.00) and waits for the device's empty ACK
// (or reset). A ping has no token (an empty message cannot carry one); the
// answer is matched by message id, or, for a Photon ≥ 0.8, as the ACK that
// uses up the next device id (spark-protocol.md §4.2).
func (s *Session) Ping(ctx context.Context) error {
	s.mu.Lock()
	old := s.tokens.ping()
	s.mu.Unlock()
	if old != nil {
		// One ping at a time: an unanswered older one would make the next
		// empty ACK ambiguous.
		if s.forget(old, false) {
			old.finish(result{err: ErrTimeout})
		}
	}
	_, err := s.roundTrip(ctx, reqPing, s.srv.cfg.RequestTimeout, func(id uint16, _ byte) msg.Message {
		return msg.NewPing(id)
	})
	return err
}

// idlePing runs on the ping timer: after PingInterval without a frame from
// the device it sends a ping (not waiting for the answer; the idle timeout
// judges) and re-arms itself.
func (s *Session) idlePing() {
	if s.ctx.Err() != nil {
		return
	}
	every := s.srv.cfg.PingInterval
	since := time.Since(time.Unix(0, s.lastRx.Load()))
	if since < every {
		s.rearmPing(every - since)
		return
	}
	s.mu.Lock()
	busy := s.tokens.ping() != nil
	s.mu.Unlock()
	if !busy {
		p, b, err := s.register(reqPing, func(id uint16, _ byte) msg.Message { return msg.NewPing(id) }, func(result) {})
		if err == nil {
			select {
			case s.out <- b:
				s.log.Debug("ping after silence")
			default: // the queue is full: there is traffic anyway
				s.forget(p, false)
			}
		}
	} else {
		// The last ping got no answer: forget it; the idle timeout decides.
		s.mu.Lock()
		p := s.tokens.ping()
		s.mu.Unlock()
		if p != nil && s.forget(p, false) {
			p.finish(result{err: ErrTimeout})
		}
	}
	s.rearmPing(every)
}

func (s *Session) rearmPing(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() == nil {
		s.pingTimer.Reset(d)
	}
}

// Send sends event e to the device (NON, no token; spark-protocol.md §4.4)
// if one of its subscriptions matches the name; TTL 0 means 60. It blocks
// only while the write queue is full.
//
// Errors, before anything is sent: ErrNameTooLong (empty or over
// Limits.EventName), ErrDataTooLong, ErrNotSubscribed, ErrTooLarge; then
// ErrClosed or ctx's error.
func (s *Session) Send(ctx context.Context, e msg.Event) error {
	if e.Name == "" || len(e.Name) > s.limits.EventName {
		return fmt.Errorf("%w: event %q (%d bytes, limit %d)", ErrNameTooLong, clip(e.Name), len(e.Name), s.limits.EventName)
	}
	if len(e.Data) > s.limits.EventData {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrDataTooLong, len(e.Data), s.limits.EventData)
	}
	if !s.Subscribed(e.Name) {
		return fmt.Errorf("%w: %q", ErrNotSubscribed, e.Name)
	}
	ttl := e.TTL
	if ttl == 0 {
		ttl = msg.DefaultTTL
	}
	b, err := s.encode(msg.NewEventToDevice(s.newID(), e.Name, e.Data, ttl, e.Private))
	if err != nil {
		return err
	}
	if s.ctx.Err() != nil {
		return s.closedErr()
	}
	return s.enqueue(ctx, b)
}

// Subscriptions returns a copy of the device's subscriptions in the order
// they came.
func (s *Session) Subscriptions() []msg.Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.subs)
}

// Subscribed reports whether an event called name would reach the device:
// some subscription's prefix starts name. The MineOnly and DeviceID filters
// are not applied: events from the bridge come from the owner and from no
// device.
func (s *Session) Subscribed(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.subs {
		if strings.HasPrefix(name, sub.Prefix) {
			return true
		}
	}
	return false
}

// Describe returns the description of the device's application: its
// functions and variables (spark-protocol.md §2.4). The session describes
// the device at once, and again when the application runs (its first own
// Subscribe or event, or Config.AppDescribeDelay after the Hello);
// Describe waits for that second answer, so it never reports the empty
// lists a device gives before its setup() ran. It sends a new Describe
// only when that one failed (once per call). Errors: ErrTimeout, a
// *ResponseError, an msg.ErrDescribe for JSON that does not parse, ctx's
// error, ErrClosed.
func (s *Session) Describe(ctx context.Context) (msg.Description, error) {
	retried := false
	for {
		s.mu.Lock()
		settled := s.appSeq != 0 && s.descDone >= s.appSeq
		if s.descApp {
			d := s.desc
			s.mu.Unlock()
			return d, nil
		}
		if settled && retried {
			err := s.descErr
			s.mu.Unlock()
			return msg.Description{}, fmt.Errorf("coapdev: describe: %w", err)
		}
		ch := s.descWaitLocked()
		s.mu.Unlock()
		if settled {
			retried = true
			if err := s.waitDescribed(ctx, s.requestDescribe(false)); err != nil {
				return msg.Description{}, err
			}
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return msg.Description{}, context.Cause(ctx)
		case <-s.ctx.Done():
			return msg.Description{}, s.closedErr()
		}
	}
}

// Description returns the latest description without waiting, and whether
// it was taken after the application started (see Describe).
func (s *Session) Description() (d msg.Description, app bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.desc, s.descApp
}

// lookup returns a description in which has holds: the latest one, or, if
// has does not hold there, the answer to a new Describe (§2.4: a request
// naming something missing describes again). ErrNotFound if it still does
// not hold.
func (s *Session) lookup(ctx context.Context, has func(msg.Description) bool) (msg.Description, error) {
	s.mu.Lock()
	d, ok := s.desc, s.hasDesc
	s.mu.Unlock()
	if ok && has(d) {
		return d, nil
	}
	// Never conclude from the answer taken before the application ran
	// (§2.4): wait for the application Describe first.
	if err := s.waitApp(ctx); err != nil {
		return msg.Description{}, err
	}
	s.mu.Lock()
	d = s.desc
	s.mu.Unlock()
	if has(d) {
		return d, nil
	}
	if err := s.waitDescribed(ctx, s.requestDescribe(false)); err != nil {
		return msg.Description{}, err
	}
	s.mu.Lock()
	d, derr := s.desc, s.descErr
	s.mu.Unlock()
	switch {
	case has(d):
		return d, nil
	case derr != nil:
		return msg.Description{}, fmt.Errorf("describe: %w", derr)
	}
	return msg.Description{}, ErrNotFound
}

// requestDescribe asks for a Describe newer than every one sent so far and
// returns its sequence number for waitDescribed; app marks the application
// Describe (only the first such request counts; later ones return its
// sequence and send nothing). It sends at once unless a Describe is in
// flight; then the next one goes when that answer comes.
func (s *Session) requestDescribe(app bool) uint64 {
	s.mu.Lock()
	if app && s.appSeq != 0 {
		seq := s.appSeq
		s.mu.Unlock()
		return seq
	}
	if app && s.appTimer != nil {
		s.appTimer.Stop()
		s.appTimer = nil
	}
	s.descWant++
	seq := s.descWant
	if app {
		s.appSeq = seq
	}
	start := !s.descInFlight
	s.descInFlight = true
	s.mu.Unlock()
	if start {
		s.sendDescribe()
	}
	return seq
}

// descWaitLocked returns a channel closed when descDone next changes.
func (s *Session) descWaitLocked() <-chan struct{} {
	if s.descCh == nil {
		s.descCh = make(chan struct{})
	}
	return s.descCh
}

// waitApp waits until the application Describe has been answered (or has
// failed): at most AppDescribeDelay plus DescribeTimeout after the Hello.
func (s *Session) waitApp(ctx context.Context) error {
	for {
		s.mu.Lock()
		done, ch := s.appSeq != 0 && s.descDone >= s.appSeq, s.descWaitLocked()
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.ctx.Done():
			return s.closedErr()
		}
	}
}

// waitDescribed waits until a Describe covering seq has completed (with or
// without success).
func (s *Session) waitDescribed(ctx context.Context, seq uint64) error {
	for {
		s.mu.Lock()
		done, ch := s.descDone >= seq, s.descWaitLocked()
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.ctx.Done():
			return s.closedErr()
		}
	}
}

// sendDescribe sends one Describe covering every sequence asked for so far;
// its answer (or timeout) is handled by describeDone. It does not block on
// an answer, so the read loop may call it.
func (s *Session) sendDescribe() {
	s.mu.Lock()
	target := s.descWant
	s.mu.Unlock()
	p, b, err := s.register(reqDescribe, func(id uint16, tok byte) msg.Message {
		return msg.NewDescribe(id, tok, 0)
	}, func(r result) { s.describeDone(target, r) })
	if err != nil {
		s.describeDone(target, result{err: err})
		return
	}
	s.mu.Lock()
	p.timer = time.AfterFunc(s.srv.cfg.DescribeTimeout, func() {
		if s.forget(p, true) {
			s.describeDone(target, result{err: ErrTimeout})
		}
	})
	s.mu.Unlock()
	if err := s.enqueue(s.ctx, b); err != nil && s.forget(p, false) {
		p.finish(result{err: err})
	}
}

// describeDone takes the answer to the Describe that covered sequences up
// to target. A failed or unparsable answer keeps the previous description
// (the session goes on).
func (s *Session) describeDone(target uint64, r result) {
	var d msg.Description
	err := r.err
	switch {
	case err != nil:
	case r.code != msg.Content:
		err = &ResponseError{Code: r.code}
	default:
		d, err = msg.ParseDescription(r.payload)
		if err != nil {
			s.srv.stats.badDescriptions.Add(1)
		}
	}
	if err != nil {
		s.log.Debug("describe failed", "err", err)
	} else {
		s.log.Debug("described", "functions", len(d.Functions), "variables", len(d.Variables))
	}

	s.mu.Lock()
	changed := false
	if err == nil {
		changed = s.setDescLocked(d, s.appSeq != 0 && target >= s.appSeq)
	}
	s.descDone = max(s.descDone, target)
	s.descErr = err
	if s.descCh != nil {
		close(s.descCh)
		s.descCh = nil
	}
	again := s.descWant > target && s.ctx.Err() == nil
	s.descInFlight = again
	s.mu.Unlock()

	if changed {
		s.deliver(item{kind: itemDescribed, desc: d})
	}
	if again {
		s.sendDescribe()
	}
}

// setDescLocked stores d; app marks a description of the running
// application. An early (pre-application) description never replaces an
// application one. It reports whether the application description
// changed.
func (s *Session) setDescLocked(d msg.Description, app bool) bool {
	if !app && s.descApp {
		return false
	}
	changed := app && (!s.descApp || !sameDescription(s.desc, d))
	s.desc, s.hasDesc = d, true
	s.descApp = s.descApp || app
	return changed
}

// describePushed takes a description the device sent on its own (POST d).
func (s *Session) describePushed(payload []byte) {
	d, err := msg.ParseDescription(payload)
	if err != nil {
		s.srv.stats.badDescriptions.Add(1)
		s.log.Debug("bad pushed description", "err", err)
		return
	}
	s.mu.Lock()
	changed := s.setDescLocked(d, true)
	s.mu.Unlock()
	if changed {
		s.deliver(item{kind: itemDescribed, desc: d})
	}
}

func sameDescription(a, b msg.Description) bool {
	return slices.Equal(a.Functions, b.Functions) && maps.Equal(a.Variables, b.Variables) &&
		a.Platform == b.Platform && a.HasPlatform == b.HasPlatform
}

// clip shortens user input quoted in an error.
func clip(s string) string {
	const n = 40
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
