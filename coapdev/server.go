package coapdev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// Server accepts device connections and runs one Session per connection.
// Its methods are safe for concurrent use.
type Server struct {
	// Immutable after NewServer.
	cfg   Config
	hooks testHooks
	// quickEvents: cfg.Handler is a QuickEventHandler.
	quickEvents bool
	// slots holds one token per handshake doing RSA work; capacity
	// MaxHandshakes. Full: a handshake waits until its deadline.
	slots chan struct{}

	stats      counters
	deliveries sync.WaitGroup // the Handler delivery goroutines
	served     atomic.Bool
	warn       rateLimit // "device refused" lines, per device id

	mu sync.Mutex
	// Guarded by mu.
	sessions map[keys.DeviceID]*Session // the newest session per device
}

// NewServer checks cfg and returns a Server; Serve starts it.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	_, quick := cfg.Handler.(QuickEventHandler)
	return &Server{
		cfg:         cfg,
		quickEvents: quick,
		slots:       make(chan struct{}, cfg.MaxHandshakes),
		sessions:    make(map[keys.DeviceID]*Session),
		warn:        rateLimit{every: time.Minute, max: 1024},
	}, nil
}

// Serve accepts connections on ln until ctx ends or ln fails, running each
// connection (handshake, then session) in its own goroutine. When ctx ends
// it closes ln and every session (reason Shutdown). It returns only after
// every connection and every Handler delivery has ended: nil after ctx
// ended, the accept error otherwise. Serve may be called once.
func (srv *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !srv.served.CompareAndSwap(false, true) {
		return ErrServerClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	srv.cfg.Logger.Debug("serving", "addr", ln.Addr().String()) // the caller says it listens, with its settings

	var conns sync.WaitGroup
	var err error
	var backoff time.Duration
	for {
		conn, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(aerr, net.ErrClosed) {
				err = fmt.Errorf("coapdev: accept: %w", aerr)
				break
			}
			// Transient (e.g. out of file descriptors): back off.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			srv.cfg.Logger.Warn("accept failed", "err", aerr)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		backoff = 0
		conns.Go(func() { srv.serveConn(ctx, conn, &conns) })
	}
	cancel()
	ln.Close()
	conns.Wait()
	srv.deliveries.Wait()
	return err
}

// Session returns the current session of device id, or nil.
func (srv *Server) Session(id keys.DeviceID) *Session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.sessions[id]
}

// Sessions returns the current sessions, in no particular order.
func (srv *Server) Sessions() []*Session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	out := make([]*Session, 0, len(srv.sessions))
	for _, s := range srv.sessions {
		out = append(out, s)
	}
	return out
}

// Stats returns a snapshot of the counters.
func (srv *Server) Stats() Stats { return srv.stats.snapshot() }

// serveConn runs one connection: the handshake under its deadline, then
// the session. Nothing large is allocated before the handshake succeeds:
// a peer that never sends a byte costs this goroutine and a few hundred
// bytes until the deadline.
func (srv *Server) serveConn(ctx context.Context, conn net.Conn, conns *sync.WaitGroup) {
	srv.stats.connections.Add(1)
	log := srv.cfg.Logger.With("remote", conn.RemoteAddr().String())

	srv.stats.handshaking.Add(1)
	hs, err := srv.handshake(ctx, conn)
	if err != nil {
		srv.stats.handshaking.Add(-1)
		reason := handshakeReason(err)
		if ctx.Err() != nil {
			reason = Shutdown
		}
		srv.handshakeFailed(log, reason, err)
		conn.Close()
		srv.stats.connections.Add(-1)
		return
	}
	s := newSession(srv, conn, hs, log)
	// The session runs in a new goroutine: the RSA work grew this one's
	// stack, and an idle session should keep only the small stack its
	// read loop needs (issue 2: memory per idle session).
	conns.Go(func() {
		defer srv.stats.connections.Add(-1)
		defer conn.Close()
		s.run(ctx)
	})
}

// handshake runs the RSA handshake (spark-protocol.md §2) with the
// handshake deadline. The deadline stays set for the device Hello.
func (srv *Server) handshake(ctx context.Context, conn net.Conn) (*handshake.Session, error) {
	deadline := time.Now().Add(srv.cfg.HandshakeTimeout)
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	g := &gatedConn{Conn: conn, srv: srv, ctx: ctx, deadline: deadline}
	defer g.release()
	return handshake.Server(g, handshake.ServerConfig{
		Key:    srv.cfg.ServerKey,
		Lookup: handshake.Lookup(srv.cfg.Keys),
		Rand:   srv.hooks.rand,
	})
}

// errNoSlot: no handshake slot freed up before the handshake deadline.
var errNoSlot = errors.New("no handshake slot before the deadline")

// gatedConn takes a handshake slot once block 2 (256 bytes) has arrived,
// before the RSA work, and keeps it until the handshake returns. Peers
// that are slow to send block 2 hold no slot, so they cannot starve
// others; the RSA work itself is bounded by MaxHandshakes.
type gatedConn struct {
	net.Conn
	srv      *Server
	ctx      context.Context
	deadline time.Time
	n        int
	held     bool
}

func (g *gatedConn) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	g.n += n
	if err == nil && !g.held && g.n >= handshake.Block2Size {
		if werr := g.acquire(); werr != nil {
			// Report no bytes: io.ReadFull drops an error that comes with
			// the bytes completing its read, and the RSA work would then run
			// without a slot.
			return 0, werr
		}
	}
	return n, err
}

func (g *gatedConn) acquire() error {
	select {
	case g.srv.slots <- struct{}{}:
		g.held = true
		return nil
	default:
	}
	t := time.NewTimer(time.Until(g.deadline))
	defer t.Stop()
	select {
	case g.srv.slots <- struct{}{}:
		g.held = true
		return nil
	case <-t.C:
		return errNoSlot
	case <-g.ctx.Done():
		return context.Cause(g.ctx)
	}
}

func (g *gatedConn) release() {
	if g.held {
		g.held = false
		<-g.srv.slots
	}
}

// handshakeReason maps a handshake error to its close reason.
func handshakeReason(err error) CloseReason {
	switch {
	case errors.Is(err, handshake.ErrDecrypt):
		return Decrypt
	case errors.Is(err, handshake.ErrBadNonce):
		return BadNonce
	case errors.Is(err, keys.ErrUnknownDevice):
		return UnknownDevice
	case errors.Is(err, keys.ErrKeyMismatch):
		return KeyMismatch
	}
	return Handshake
}

// handshakeFailed counts and logs a connection that ended before its
// session started. Refused devices are logged at Warn, rate-limited
// (STYLE.md §5); everything else at Debug (scanners and resets are noise).
func (srv *Server) handshakeFailed(log *slog.Logger, reason CloseReason, err error) {
	srv.stats.handshakesFailed[reason].Add(1)
	attrs := []any{"reason", reason.String(), "err", err}
	var de *handshake.DeviceError
	if !errors.As(err, &de) {
		log.Debug("handshake failed", attrs...)
		return
	}
	attrs = append(attrs, "device", de.ID.String())
	if reason == UnknownDevice || reason == KeyMismatch {
		// An operator must act (register the key): one Warn per device
		// per minute, so a second new device is not hidden by the first.
		if n, ok := srv.warn.allow(de.ID, time.Now()); ok {
			if n > 0 {
				attrs = append(attrs, "suppressed", n)
			}
			log.Warn("device refused", attrs...)
			return
		}
	}
	log.Debug("handshake failed", attrs...)
}

// register makes s the current session of its device. An older session is
// closed (reason Replaced), and register waits, up to replaceWait, until
// its SessionEnded has been delivered, so the Handler sees the old end
// before the new start.
func (srv *Server) register(s *Session) {
	srv.mu.Lock()
	old := srv.sessions[s.id]
	srv.sessions[s.id] = s
	srv.mu.Unlock()
	if old == nil {
		return
	}
	old.fail(Replaced, nil)
	t := time.NewTimer(replaceWait)
	defer t.Stop()
	select {
	case <-old.dlv.ended:
	case <-t.C:
	case <-s.ctx.Done():
	}
}

// unregister removes s if it is still its device's current session.
func (srv *Server) unregister(s *Session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.sessions[s.id] == s {
		delete(srv.sessions, s.id)
	}
}

// newMsgID returns the start of a session's S→D message-id counter: random
// (spark-protocol.md §2.4); the first message uses it + 1.
func (srv *Server) newMsgID() uint16 {
	if srv.hooks.msgID != nil {
		return srv.hooks.msgID()
	}
	return uint16(rand.Uint32())
}

// rateLimit lets one event per key through per interval and counts the
// others. It remembers at most max keys; when full, the key seen longest
// ago is forgotten.
type rateLimit struct {
	every time.Duration
	max   int
	mu    sync.Mutex
	// Guarded by mu.
	seen map[keys.DeviceID]*rateEntry
}

type rateEntry struct {
	last       time.Time
	suppressed int
}

// allow reports whether to log for id now, and how many were suppressed
// for it since the last time it said yes.
func (r *rateLimit) allow(id keys.DeviceID, now time.Time) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = make(map[keys.DeviceID]*rateEntry)
	}
	e := r.seen[id]
	if e != nil && now.Sub(e.last) < r.every {
		e.suppressed++
		return 0, false
	}
	if e == nil {
		if len(r.seen) >= r.max {
			var oldest keys.DeviceID
			first := true
			for k, v := range r.seen {
				if first || v.last.Before(r.seen[oldest].last) {
					oldest, first = k, false
				}
			}
			delete(r.seen, oldest)
		}
		e = &rateEntry{}
		r.seen[id] = e
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return n, true
}
