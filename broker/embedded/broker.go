package embedded

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Broker is a mochi-mqtt broker running in this process, with its
// listeners, authentication and ACL, and optional persistence. The bridge
// talks to it through Clients from NewClient; other programs connect over
// TCP, TLS or WebSocket.
//
// Lifecycle: New opens the listening sockets (so Addr is known at once),
// Start serves, Close stops. A Broker is not restartable; make a new one on
// the same DataDir.
type Broker struct {
	// Immutable after New.
	cfg       Config
	srv       *mqtt.Server
	inline    *mqtt.Client // the bridge's identity inside mochi; never connected
	auth      *auth
	store     *store // nil without DataDir
	pacer     *pacer // nil when mochi's queue length cannot be read
	listeners map[string]*listener
	retain    *retainGuard // unbound when mochi's index lock cannot be found

	nextSubID atomic.Int64  // mochi inline subscription ids
	dropped   atomic.Uint64 // hand-off drops of every Client
	closed    atomic.Bool

	// pubMu is held for reading by every publish into mochi and for
	// writing by Close, which so waits for publishes under way.
	pubMu sync.RWMutex

	// Guarded by mu.
	mu       sync.Mutex
	started  bool
	stopping bool
}

// Listener ids, also the Protocol of each listener in mochi's logs.
const (
	listenerTCP = "tcp"
	listenerTLS = "tls"
	listenerWS  = "ws"
)

// clientReadBuffer is the size of the read buffer mochi gives each network
// client (2 KiB by default), held for as long as the client is connected.
// It holds the bytes read from the socket ahead of the packet being
// decoded; the rest of a packet larger than the buffer is read straight
// into the packet, so the size only bounds how many small packets (a
// PUBACK is 4 bytes, a command a few dozen) one read brings in. The
// broker's clients mostly receive; 512 bytes save 1.5 KiB per client.
const clientReadBuffer = 512

// New builds a broker from cfg and opens its listening sockets. It does not
// serve until Start. Errors: ErrConfig, ErrUsersFile (naming the line), and
// those of opening sockets, TLS files and the store.
func New(cfg Config) (*Broker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var users *Users
	if cfg.UsersFile != "" {
		var err error
		if users, err = LoadUsers(cfg.UsersFile); err != nil {
			return nil, err
		}
	}
	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("embedded: load TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	caps := mqtt.NewDefaultServerCapabilities()
	// Retained messages are state (discovery, values, pending calls): they
	// must never expire by age. mochi's default deletes any retained
	// message older than a day (clearExpiredRetainedMessages) and ends
	// in-flight messages too; 0 turns that off. Messages that carry their
	// own MQTT 5 expiry interval still expire.
	caps.MaximumMessageExpiryInterval = 0
	// mochi allocates this many slots per client at connect (8192 by
	// default, 64 KiB of pointers). See Config.ClientWritesPending.
	caps.MaximumClientWritesPending = int32(cfg.ClientWritesPending)
	caps.MaximumPacketSize = uint32(cfg.MaxPacketSize)
	caps.MaximumSessionExpiryInterval = uint32(min(cfg.SessionExpiry.Seconds(), math.MaxUint32))

	b := &Broker{
		cfg:       cfg,
		listeners: map[string]*listener{},
		retain:    newRetainGuard(),
	}
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:            caps,
		Logger:                  slog.New(retainLogHook{quietHandler{cfg.Logger.Handler()}, b.retain}),
		SysTopicResendInterval:  int64(cfg.SysTopicInterval.Seconds()),
		ClientNetReadBufferSize: clientReadBuffer,
	})
	b.inline = b.srv.NewClient(nil, mqtt.LocalListener, "spark2mqtt-inline", true)
	b.inline.Properties.ProtocolVersion = 5 // so MQTT 5 properties are kept

	if p, ok := newPacer(cfg.ClientWritesPending, int(caps.MaximumInflight), cfg.WriteTimeout/2, cfg.Logger); ok {
		b.pacer = p
		if err := b.srv.AddHook(p, nil); err != nil {
			return nil, fmt.Errorf("embedded: add pacer hook: %w", err)
		}
	} else {
		cfg.Logger.Warn("mqtt write queues not paced: this mochi version hides their length; bursts over the client writes pending may be dropped")
	}
	b.auth = newAuth(users, cfg.ProtectedTopics, b.pacer, cfg.Logger)
	if b.retain.bind(b.srv.Topics) {
		b.auth.retain = b.retain
		if err := b.srv.AddHook(b.retain, nil); err != nil {
			return nil, fmt.Errorf("embedded: add retained scans hook: %w", err)
		}
	} else {
		cfg.Logger.Warn("mqtt retained scans not guarded: this mochi version hides its topic index lock; a retained publish during a wildcard subscribe is a data race")
	}
	if err := b.srv.AddHook(b.auth, nil); err != nil {
		return nil, fmt.Errorf("embedded: add auth hook: %w", err)
	}
	if err := b.srv.AddHook(newPacketIDs(cfg.MaxPacketSize), nil); err != nil {
		return nil, fmt.Errorf("embedded: add packet id hook: %w", err)
	}

	if cfg.DataDir != "" {
		st, err := openStore(filepath.Join(cfg.DataDir, "mqtt"), cfg.Logger)
		if err != nil {
			return nil, err
		}
		b.store = st
		if err := b.srv.AddHook(st, nil); err != nil {
			_ = st.Stop()
			return nil, fmt.Errorf("embedded: add store hook: %w", err)
		}
	}

	if err := b.listen(listenerTCP, "tcp", cfg.Addr, nil); err != nil {
		b.abort()
		return nil, err
	}
	if tlsConfig != nil {
		if err := b.listen(listenerTLS, "tls", cfg.TLSAddr, tlsConfig); err != nil {
			b.abort()
			return nil, err
		}
	}
	if cfg.WebSocketAddr != "" {
		if err := b.listen(listenerWS, "ws", cfg.WebSocketAddr, nil); err != nil {
			b.abort()
			return nil, err
		}
	}
	return b, nil
}

func (b *Broker) listen(id, proto, addr string, tlsConfig *tls.Config) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("embedded: listen %s %s: %w", proto, addr, err)
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	l := newListener(id, proto, ln, b.cfg)
	l.disconnect = b.disconnectListener
	if err := b.srv.AddListener(l); err != nil {
		_ = ln.Close()
		return fmt.Errorf("embedded: add listener %s: %w", id, err)
	}
	b.listeners[id] = l
	return nil
}

// abort releases what New opened before it failed.
func (b *Broker) abort() {
	for _, l := range b.listeners {
		_ = l.ln.Close()
	}
	if b.store != nil {
		_ = b.store.Stop()
	}
}

// Start loads the persisted state, starts serving every listener and, with
// Config.Will set, publishes the will (the bridge is not online until it
// says so). It does not block. It returns ErrStarted on a second call or
// after Close.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.stopping {
		return ErrStarted
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("embedded: start: %w", err)
	}
	b.started = true
	for _, id := range []string{listenerTCP, listenerTLS, listenerWS} {
		if l, ok := b.listeners[id]; ok {
			b.cfg.Logger.Info("mqtt listening", "listener", id, "addr", l.Address())
		}
	}
	if w := b.cfg.Will; w != nil {
		if err := b.inject(*w); err != nil {
			return fmt.Errorf("embedded: publish will: %w", err)
		}
	}
	return nil
}

// Close publishes Config.Will (when started), then stops the listeners,
// disconnects every network client, and closes the store. Publish and
// Subscribe on any Client return broker.ErrClosed from then on. It waits
// up to ctx for mochi to finish; it is idempotent.
func (b *Broker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.stopping {
		b.mu.Unlock()
		return nil
	}
	b.stopping = true
	started := b.started
	b.mu.Unlock()

	if started && b.cfg.Will != nil {
		if err := b.inject(*b.cfg.Will); err != nil {
			b.cfg.Logger.Warn("mqtt publish will at close", "err", err)
		}
	}
	if b.pacer != nil {
		b.pacer.close() // publishes waiting for a slow client go on
	}
	b.pubMu.Lock() // waits for publishes under way
	b.closed.Store(true)
	b.pubMu.Unlock()

	done := make(chan struct{})
	go func() { // owned by Close; ends when mochi has stopped
		defer close(done)
		_ = b.srv.Close() // always nil
	}()
	select {
	case <-done:
		b.cfg.Logger.Info("mqtt broker stopped")
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded: close: %w", ctx.Err())
	}
}

func (b *Broker) isClosed() bool { return b.closed.Load() }

// Addr returns the address of the plain TCP listener.
func (b *Broker) Addr() net.Addr { return b.addr(listenerTCP) }

// TLSAddr returns the address of the TLS listener, or nil without one.
func (b *Broker) TLSAddr() net.Addr { return b.addr(listenerTLS) }

// WebSocketAddr returns the address of the WebSocket listener, or nil
// without one.
func (b *Broker) WebSocketAddr() net.Addr { return b.addr(listenerWS) }

func (b *Broker) addr(id string) net.Addr {
	if l, ok := b.listeners[id]; ok {
		return l.ln.Addr()
	}
	return nil
}

// MaxPacketSize returns the effective maximum packet size.
func (b *Broker) MaxPacketSize() int { return b.cfg.MaxPacketSize }

// QueueSize returns the effective capacity of an inline subscription's
// hand-off queue.
func (b *Broker) QueueSize() int { return b.cfg.QueueSize }

// Stats are counters of a Broker since New.
type Stats struct {
	ClientsConnected int64  // network clients connected now
	Retained         int64  // retained messages held
	Dropped          uint64 // messages dropped by inline subscriptions' hand-off queues
	ClientDropped    int64  // messages dropped for network clients whose write queue or in-flight window was full
	Paced            uint64 // deliveries that waited for room in a network client's write queue or in-flight window
	Refused          uint64 // connections refused by authentication
}

// Stats returns the current counters. Safe for concurrent use.
func (b *Broker) Stats() Stats {
	return Stats{
		ClientsConnected: atomic.LoadInt64(&b.srv.Info.ClientsConnected),
		Retained:         int64(b.srv.Topics.Retained.Len()),
		Dropped:          b.dropped.Load(),
		ClientDropped:    atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped),
		Refused:          b.auth.refused.Load(),
		Paced:            b.paced(),
	}
}

func (b *Broker) paced() uint64 {
	if b.pacer == nil {
		return 0
	}
	return b.pacer.waits.Load()
}

// Compile-time check.
var _ broker.Client = (*Client)(nil)

// quietHandler passes mochi's log lines on with Info demoted to Debug: mochi
// logs its own lifecycle at Info, and this package logs one line per
// listener and one at stop instead. mochi's Warn for each delivery dropped
// at a client's in-flight limit is demoted too: the pacer warns once per
// client that stops acknowledging, and Stats.ClientDropped counts them.
type quietHandler struct{ slog.Handler }

// mochiPerDropWarning is mochi's message for each delivery dropped at a
// client's in-flight limit (server.go, publishToClient).
const mochiPerDropWarning = "client store quota reached"

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, demote(l))
}

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	if r.Message == mochiPerDropWarning {
		r.Level = slog.LevelDebug
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

// disconnectListener tells every client of one listener that the server is
// shutting down. It stands in for mochi's closeListenerClients, whose
// Clients.GetByListener takes the clients' read lock twice and so deadlocks
// when a client connects or leaves between the two.
func (b *Broker) disconnectListener(id string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}
