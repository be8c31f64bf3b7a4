package coapdev

import (
	"crypto/rsa"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// KeyLookup returns the trusted public key of a device for the handshake
// (spark-protocol.md §2.2 step 4–5); (*keys.Store).Lookup is one. offered
// is the key a Photon sent in block 2, nil for a Core. It must be safe for
// concurrent use. Return an error wrapping keys.ErrUnknownDevice or
// keys.ErrKeyMismatch to refuse the device with that close reason.
type KeyLookup func(id keys.DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error)

// Handler receives what happens on the sessions of a Server. Its methods
// must not block for long: the Server calls them from one delivery
// goroutine per session (started on demand), fed by a bounded queue, so a
// slow handler delays only its own session's deliveries and, past the
// bound, drops that session's oldest events (counted in Stats). It never
// stalls a session's reads or writes.
//
// Order: for one session, SessionStarted comes first, then its events (and
// Described, see DescribeHandler), then SessionEnded, once. When a device
// connects again, the older session's SessionEnded (reason Replaced) is
// delivered before the newer session's SessionStarted (the newer session
// waits up to a few seconds for that). Handler methods may call Session
// methods that block (Call, Get, ...) only from another goroutine.
type Handler interface {
	// SessionStarted reports a device whose encrypted Hello decrypted and
	// parsed: it is proven genuine (spark-protocol.md §7.3).
	SessionStarted(s *Session)
	// Event reports an event the device published. System events (names
	// starting with "spark" or "particle", see IsSystemEvent) come too.
	// e.Data is the handler's to keep.
	Event(s *Session, e msg.Event)
	// SessionEnded reports the end of a started session; err is a
	// *SessionError.
	SessionEnded(s *Session, err error)
}

// DescribeHandler is an optional interface of a Handler: Described reports
// a new description of the device's application (functions and variables),
// delivered in order with the events when it changes. Descriptions taken
// before the application runs are not reported (spark-protocol.md §2.4: they
// are empty).
type DescribeHandler interface {
	Described(s *Session, d msg.Description)
}

// QuickEventHandler is an optional interface of a Handler whose Event
// never blocks and returns at once (it copies or queues what it keeps and
// hands any work off). Its Event is called on the session's read loop
// itself whenever no other Handler call of the session is queued or under
// way, which saves a goroutine start and a hand-off per event; otherwise
// the event is queued as for any Handler, so the calls stay in order and
// one at a time. QuickEvents is a marker and is never called.
type QuickEventHandler interface {
	Handler
	QuickEvents()
}

// SubscribeHandler is an optional interface of a Handler, for one that
// keeps an index of subscriptions instead of asking every session
// (Session.Subscribed) for every event. Subscribed reports a subscription
// the session is about to record. Unlike the Handler's methods it is called
// synchronously, on the session's read loop, before Session.Subscribed and
// Session.Subscriptions report the subscription and before the device gets
// its ACK: so it must only record and return, never block or call the
// session. It may come before the session's SessionStarted has been
// delivered, and always comes before its SessionEnded. Refused
// subscriptions (the firehose, a repeat, over the per-session limit) are
// not reported. A session's subscriptions last as long as it does.
type SubscribeHandler interface {
	Subscribed(s *Session, sub msg.Subscription)
}

// Config configures a Server. The zero value of every field but Keys and
// ServerKey is usable.
type Config struct {
	// Keys looks up device keys; required.
	Keys KeyLookup
	// ServerKey is the server's RSA-2048 private key; required.
	ServerKey *rsa.PrivateKey
	// Handler receives session starts, events and ends; nil discards them.
	Handler Handler
	// Logger; nil discards.
	Logger *slog.Logger

	// HandshakeTimeout bounds the whole handshake, from accept to the
	// device Hello, including the wait for a handshake slot. Default 30 s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a session with nothing received for that long
	// (reason Idle); every frame refreshes it. The device pings every 15 s
	// (spark-protocol.md §5). Default 40 s.
	IdleTimeout time.Duration
	// PingInterval: after that much silence the server pings the device
	// (CON empty). Default 20 s; negative disables.
	PingInterval time.Duration
	// WriteTimeout bounds each write to the device (reason SlowPeer).
	// Default 10 s.
	WriteTimeout time.Duration
	// RequestTimeout bounds Call, Get and Signal. Default 30 s.
	RequestTimeout time.Duration
	// DescribeTimeout bounds one Describe request. Default 15 s.
	DescribeTimeout time.Duration
	// AppDescribeDelay: the description taken at once is empty on a device
	// in AUTOMATIC mode (spark-protocol.md §2.4); the server describes
	// again on the first application Subscribe or event, or after this
	// delay from the Hello, whichever comes first. Default 5 s.
	AppDescribeDelay time.Duration
	// MaxHandshakes bounds the handshakes doing RSA work at once; more
	// wait for a slot within their HandshakeTimeout. Default
	// 2 × GOMAXPROCS.
	MaxHandshakes int
	// HandlerQueue bounds the undelivered events of one session; past it
	// the oldest is dropped and counted. Default 64.
	HandlerQueue int
	// Now returns the time for GetTime answers; nil means time.Now.
	Now func() time.Time
}

// Defaults.
const (
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultIdleTimeout      = 40 * time.Second
	DefaultPingInterval     = 20 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultRequestTimeout   = 30 * time.Second
	DefaultDescribeTimeout  = 15 * time.Second
	DefaultAppDescribeDelay = 5 * time.Second
	DefaultHandlerQueue     = 64
)

// withDefaults returns cfg with every zero field set to its default.
func (cfg Config) withDefaults() Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Handler == nil {
		cfg.Handler = nopHandler{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&cfg.IdleTimeout, DefaultIdleTimeout)
	def(&cfg.PingInterval, DefaultPingInterval)
	def(&cfg.WriteTimeout, DefaultWriteTimeout)
	def(&cfg.RequestTimeout, DefaultRequestTimeout)
	def(&cfg.DescribeTimeout, DefaultDescribeTimeout)
	def(&cfg.AppDescribeDelay, DefaultAppDescribeDelay)
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = max(2, 2*runtime.GOMAXPROCS(0))
	}
	if cfg.HandlerQueue <= 0 {
		cfg.HandlerQueue = DefaultHandlerQueue
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg
}

func (cfg Config) validate() error {
	switch {
	case cfg.Keys == nil:
		return errors.New("coapdev: config: Keys is required")
	case cfg.ServerKey == nil:
		return errors.New("coapdev: config: ServerKey is required")
	case cfg.HandshakeTimeout < 0, cfg.IdleTimeout < 0, cfg.WriteTimeout < 0,
		cfg.RequestTimeout < 0, cfg.DescribeTimeout < 0, cfg.AppDescribeDelay < 0:
		return errors.New("coapdev: config: negative timeout")
	}
	return nil
}

type nopHandler struct{}

func (nopHandler) SessionStarted(*Session)      {}
func (nopHandler) Event(*Session, msg.Event)    {}
func (nopHandler) SessionEnded(*Session, error) {}

// testHooks are set only by this package's tests.
type testHooks struct {
	rand  io.Reader     // handshake randomness (nonce, session material)
	msgID func() uint16 // start of the outgoing message-id counter
}
