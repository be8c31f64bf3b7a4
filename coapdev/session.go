package coapdev

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Info describes a session's device, as learnt from the handshake and the
// Hello.
type Info struct {
	// Kind is Core or Photon, from the length of handshake block 2.
	Kind handshake.Kind
	// Hello is the device Hello payload (spark-protocol.md §4.4).
	Hello msg.Hello
	// Connected is when the Hello was accepted (Config.Now).
	Connected time.Time
}

// Limits are the sizes a device accepts in requests; Call, Get and Send
// refuse larger ones before anything is sent (spark-protocol.md §4.4).
type Limits struct {
	// Name bounds function and variable names: 12 on a Core, 64 on a
	// Photon. (Photons up to 0.7 truncate names to 12 in their Describe,
	// and a name must be described to be called, so 64 is safe.)
	Name int
	// Arg bounds a function argument: 63 on both kinds. A Core drops the
	// connection on 64; a Photon up to 0.8 runs the function with the
	// previous argument (observed). Photons from Device OS 1.4 take 622,
	// but on TCP nothing in the Hello tells them apart, so 63 holds.
	Arg int
	// EventName bounds the name of an event sent to the device: 63.
	EventName int
	// EventData bounds event data sent to the device: 63 on a Core, 255 on
	// a Photon (the sizes they publish at most).
	EventData int
}

func limitsFor(k handshake.Kind) Limits {
	if k == handshake.Core {
		return Limits{Name: 12, Arg: 63, EventName: 63, EventData: 63}
	}
	return Limits{Name: 64, Arg: 63, EventName: 63, EventData: 255}
}

// Sizes of a session's buffers and queues, kept small: an idle session
// should cost a few KiB (issue 2 benchmark goal: ≤ 16 KiB).
const (
	// outQueue bounds the plaintexts waiting for the write loop. Full:
	// requests block on their ctx; the read loop blocks until the write
	// deadline ends the session (SlowPeer).
	outQueue = 8
	// maxBatch bounds the bytes the write loop gathers into one Write.
	maxBatch = 4096
	// keepWriteBuf: the write loop keeps its buffer only up to this size.
	keepWriteBuf = 1024
	// maxSubscriptions bounds the subscriptions recorded per session (a
	// Core has 4 slots; Photons a few more).
	maxSubscriptions = 64
	// replaceWait bounds how long a new session waits for the session it
	// replaces to deliver its SessionEnded.
	replaceWait = 5 * time.Second
)

// Session is one connected device after the handshake. Its methods are safe
// for concurrent use. A Session is created by the Server and ends on a
// device error, an idle timeout, Close, a newer session of the same device,
// or the Serve context's end; Done and Err report it.
//
// Goroutines: the connection goroutine of the Server reads (it owns the
// inbound cipher, the device message counter and all routing); one write
// loop goroutine owns the outbound cipher and IV chain and is the only one
// that writes to the conn. Callers of Call, Get, … block until their answer
// comes, their ctx ends or their timeout (Config.RequestTimeout) passes.
type Session struct {
	// Immutable after newSession.
	srv    *Server
	conn   net.Conn
	id     keys.DeviceID
	idText string // id.String(), once: a Handler asks for it with every event
	kind   handshake.Kind
	limits Limits
	outMax int                // largest S→D frame (ciphertext bytes)
	ctx    context.Context    // ends when the session ends
	cancel context.CancelFunc // cancels ctx
	// done is closed by run when the session has ended; never otherwise.
	done chan struct{}
	// out carries encoded CoAP plaintexts to the write loop; never closed.
	// Full-queue policy: see outQueue.
	out chan []byte

	// Set by run before the session is shared, then immutable.
	log   *slog.Logger
	info  Info
	start time.Time // when the session started, for the end log

	// Owned by the read loop.
	fr          *frameIn
	recv        uint16 // id of the last accepted device CON/NON (spark-protocol.md §4.2)
	lastReplyID uint16 // id of the last device CON we answered
	lastReply   []byte // that answer, re-sent for a duplicate (§7.10)

	// Owned by the write loop (by run before the write loop starts).
	block cipher.Block
	wiv   [frame.BlockSize]byte
	wbuf  []byte

	lastRx atomic.Int64                 // unix ns of the last frame read
	endErr atomic.Pointer[SessionError] // the first reason the session ended

	mu sync.Mutex
	// Guarded by mu.
	nextID    uint16 // last S→D message id used
	tokens    tokenTable
	subs      []msg.Subscription
	appTimer  *time.Timer // describes the application after AppDescribeDelay
	pingTimer *time.Timer // pings the device after PingInterval of silence
	describeState

	dlv delivery
}

// describeState tracks Describe requests (spark-protocol.md §2.4). Every
// request for a description gets a sequence number (descWant); at most one
// Describe is in flight, and when it ends, another is sent if a newer
// sequence was asked for meanwhile. Guarded by Session.mu.
type describeState struct {
	descWant     uint64 // last sequence asked for
	descDone     uint64 // sequence covered by the last completed Describe
	descInFlight bool
	descErr      error // error of the last completed Describe, nil on success
	desc         msg.Description
	hasDesc      bool
	descApp      bool   // desc was taken after the application started
	appSeq       uint64 // sequence of the application Describe; 0 before the trigger
	// descCh, made by the first waiter (descWaitLocked), is closed and
	// cleared whenever descDone changes.
	descCh chan struct{}
}

func newSession(srv *Server, conn net.Conn, hs *handshake.Session, log *slog.Logger) *Session {
	// Not derived from the Serve context: a child context with an
	// AfterFunc costs a map per session; run watches the parent instead.
	ctx, cancel := context.WithCancel(context.Background())
	block, err := aes.NewCipher(hs.Key[:])
	if err != nil {
		panic("coapdev: " + err.Error()) // 16-byte key: cannot happen
	}
	max := frame.CoreMaxFrame
	if hs.Kind == handshake.Photon {
		max = frame.PhotonMaxFrame
	}
	s := &Session{
		srv:    srv,
		conn:   conn,
		id:     hs.DeviceID,
		idText: hs.DeviceID.String(),
		kind:   hs.Kind,
		limits: limitsFor(hs.Kind),
		// spark-protocol.md §3: keep S→D frames ≤ 640 for both kinds.
		outMax: frame.CoreMaxFrame,
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		out:    make(chan []byte, outQueue),
		log:    log,
		fr:     newFrameIn(conn, block, hs.IV, max),
		block:  block,
		wiv:    hs.IV,
	}
	s.dlv.ended = make(chan struct{})
	s.dlv.q = s.dlv.one[:0]
	s.nextID = srv.newMsgID()
	return s
}

// ID returns the device id.
func (s *Session) ID() keys.DeviceID { return s.id }

// IDString returns ID().String() without allocating.
func (s *Session) IDString() string { return s.idText }

// Remote returns the device's address.
func (s *Session) Remote() net.Addr { return s.conn.RemoteAddr() }

// Info returns the device kind, its Hello and when it connected.
func (s *Session) Info() Info { return s.info }

// Limits returns the request size limits of the device.
func (s *Session) Limits() Limits { return s.limits }

// Done returns a channel closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session runs and its *SessionError once Done is
// closed.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.endErr.Load()
	default:
		return nil
	}
}

// Close ends the session with reason Closed, unless it has ended already.
// It does not wait; use Done.
func (s *Session) Close() { s.fail(Closed, nil) }

// fail records why the session ends (the first reason wins) and starts the
// end: the context is cancelled and the conn closed, which unblocks the
// read loop and the write loop.
func (s *Session) fail(reason CloseReason, err error) {
	s.endErr.CompareAndSwap(nil, &SessionError{Reason: reason, Err: err})
	s.cancel()
	s.conn.Close()
}

// closedErr is the error of requests on an ended session.
func (s *Session) closedErr() error {
	if e := s.endErr.Load(); e != nil {
		return fmt.Errorf("%w: %w", ErrClosed, e)
	}
	return ErrClosed
}

// newID returns the next S→D message id.
func (s *Session) newID() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	return s.nextID
}

// run drives the session after the handshake, in the connection's
// goroutine: Hello both ways, registration, the write loop, the read loop,
// then the end (STYLE.md §3.2). The handshake deadline is still set on the
// conn and bounds the device Hello.
func (s *Session) run(parent context.Context) {
	stop := context.AfterFunc(parent, func() { s.fail(Shutdown, nil) })
	defer stop()
	defer s.fail(PeerClosed, nil) // closes the conn if nothing else did
	if !s.begin() {
		return
	}
	var g errgroup.Group
	g.Go(s.writeLoop)
	s.armTimers()
	// This goroutine's stack while it waits in the read loop is what an
	// idle session costs: run, readLoop and frameIn keep small frames.
	s.finish(s.readLoop(), &g)
}

// begin reads the Hello, registers and starts the session. It reports
// false for a connection that ended before (a handshake failure).
func (s *Session) begin() bool {
	err := s.hello()
	s.srv.stats.handshaking.Add(-1)
	if err != nil {
		reason := classify(err, Handshake)
		if reason == PeerClosed {
			reason = Handshake // cut short before the session started
		}
		s.fail(reason, err)
		e := s.endErr.Load()
		s.srv.handshakeFailed(s.log, e.Reason, err)
		close(s.done)
		return false
	}
	s.start = time.Now()
	s.srv.stats.handshakesOK.Add(1)
	s.log = s.log.With("device", s.idText)
	s.lastRx.Store(time.Now().UnixNano())

	// The session is proven (§7.3): it replaces any older one and starts.
	s.srv.register(s)
	s.deliver(item{kind: itemStarted})
	s.srv.stats.sessions.Add(1)
	s.log.Info("session started", "kind", s.kind.String(),
		"product", s.info.Hello.ProductID, "version", s.info.Hello.ProductVersion,
		"platform", s.info.Hello.PlatformID, "flags", s.info.Hello.Flags)
	return true
}

// armTimers starts the application-Describe and idle-ping timers and
// sends the first Describe.
func (s *Session) armTimers() {
	s.mu.Lock()
	s.appTimer = time.AfterFunc(s.srv.cfg.AppDescribeDelay, func() { s.requestDescribe(true) })
	if d := s.srv.cfg.PingInterval; d > 0 {
		s.pingTimer = time.AfterFunc(d, s.idlePing)
	}
	s.mu.Unlock()
	// spark-protocol.md §2.4: describe at once; the answer is usually
	// empty, the application Describe follows.
	s.requestDescribe(false)
}

// finish ends the session after the read loop returned err.
func (s *Session) finish(err error, g *errgroup.Group) {
	if errors.Is(err, io.EOF) {
		err = nil // a clean close between frames
	}
	s.fail(classify(err, PeerClosed), err)
	_ = g.Wait() // the write loop reports through fail
	s.end()
}

// end runs after both loops have stopped: it fails what is pending,
// unregisters the session, queues SessionEnded and logs the end.
func (s *Session) end() {
	s.mu.Lock()
	if s.appTimer != nil {
		s.appTimer.Stop()
	}
	if s.pingTimer != nil {
		s.pingTimer.Stop()
	}
	all := s.tokens.drain()
	s.mu.Unlock()
	cerr := s.closedErr()
	for _, p := range all {
		p.finish(result{err: cerr})
	}
	s.srv.unregister(s)
	e := s.endErr.Load()
	s.srv.stats.sessions.Add(-1)
	s.srv.stats.sessionsEnded[e.Reason].Add(1)
	attrs := []any{"reason", e.Reason.String(), "took", time.Since(s.start).Round(time.Millisecond)}
	if e.Err != nil {
		attrs = append(attrs, "err", e.Err)
	}
	s.log.Info("session ended", attrs...)
	s.deliver(item{kind: itemEnded, err: e})
	close(s.done)
}

// hello reads the device Hello and sends the server Hello at once
// (spark-protocol.md §2.4): the Photon gives up after 2–4 s without it.
// Later frames stay unread until the session runs, so data that came early
// is processed after our Hello.
func (s *Session) hello() error {
	p, err := s.fr.next()
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	m, err := msg.Decode(p)
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if m.Kind() != msg.KindHello {
		return fmt.Errorf("hello: first message is %s %s: %w", m.Type, m.Kind(), errProtocol)
	}
	h, err := msg.ParseHello(m.Payload)
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	s.recv = m.ID
	s.info = Info{Kind: s.kind, Hello: h, Connected: s.srv.cfg.Now()}
	b, err := msg.NewHello(s.newID(), nil, nil).Encode()
	if err != nil {
		return fmt.Errorf("server hello: %w", err)
	}
	if err := s.write(frame.Seal(nil, s.block, &s.wiv, b)); err != nil {
		return fmt.Errorf("server hello: %w", err)
	}
	// The handshake deadline is over; from now on every read has the idle
	// deadline and every write the write deadline.
	return s.conn.SetDeadline(time.Time{})
}

// errProtocol marks protocol violations for classify.
var errProtocol = errors.New("protocol violation")

// classify maps the error that ended a loop (or the handshake's Hello
// phase) to a close reason; other is used for unrecognised errors.
func classify(err error, other CloseReason) CloseReason {
	var ne net.Error
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, frame.ErrShort),
		errors.Is(err, net.ErrClosed):
		return PeerClosed
	case errors.Is(err, frame.ErrTooLarge):
		return TooLarge
	case errors.Is(err, frame.ErrDecrypt):
		return Decrypt
	case errors.Is(err, frame.ErrEmpty), errors.Is(err, frame.ErrMisaligned),
		errors.Is(err, msg.ErrMalformed), errors.Is(err, errProtocol):
		return Protocol
	case errors.Is(err, errIdle):
		return Idle
	case errors.Is(err, errSlow):
		return SlowPeer
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return other
	}
	return other
}

var (
	errIdle = errors.New("no frame within the idle timeout")
	errSlow = errors.New("write deadline exceeded")
)

// IsSystemEvent reports whether an event name (or a subscription prefix)
// is a system one: it starts with "spark" or "particle", in any case
// (spark-protocol.md §4.4). Handlers get system events too and use this to
// tell them apart.
func IsSystemEvent(name string) bool {
	return hasPrefixFold(name, "spark") || hasPrefixFold(name, "particle")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
