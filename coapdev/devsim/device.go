package devsim

import (
	"context"
	"crypto/rsa"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Device is a simulated Spark Core or Photon: the device side of the
// protocol. Make one with New, then Run it on a connection (or Dial). Its
// methods are safe for concurrent use.
type Device struct {
	// Immutable after New.
	cfg Config
	q   quirks
	key *rsa.PrivateKey
	log *slog.Logger

	running atomic.Bool // one Run at a time

	mu sync.Mutex
	// Guarded by mu.
	link      *link         // the connection, once its hello exchange is done; nil otherwise
	ready     chan struct{} // closed when link is set; replaced when that link ends; never nil
	functions []Function
	variables []Variable
	subs      []msg.Subscription
	stats     Stats
	recent    [rateBurst]time.Time // the last publish times (ring), for the rate limit
	recentN   int
	lastArg   string // the previous function argument (Photon: reused after an over-long one)
	onUp      func() // called (without mu) when a connection is up; set by Fleet
}

// Stats counts what a Device did, over all its connections.
type Stats struct {
	Connects    int       // connections that completed the hello exchange
	Describes   int       // Describe requests answered
	Calls       int       // function calls run (including unknown names)
	Gets        int       // variable requests answered (including 4.04)
	Signals     int       // Signal start/stop received
	EventsIn    int       // server events delivered to OnEvent
	EventsOut   int       // events published
	RateLimited int       // Publish calls refused by the rate limit
	PingsIn     int       // server pings answered
	PingsOut    int       // keepalive pings sent
	ServerTime  time.Time // the last time the server gave (GetTime); zero if none
}

// New returns a Device for cfg. It returns ErrConfig for an invalid cfg, or
// the error of generating the shared key.
func New(cfg Config) (*Device, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	q, _ := cfg.Firmware.quirks()
	key := cfg.DeviceKey
	if key == nil {
		k, err := SharedKey()
		if err != nil {
			return nil, err
		}
		key = k
	}
	if cfg.HelloTimeout > 0 && q.helloWait > 0 {
		q.helloWait = cfg.HelloTimeout
	}
	return &Device{
		cfg:       cfg,
		q:         q,
		key:       key,
		log:       cfg.Logger.With("device", cfg.DeviceID.String()),
		ready:     make(chan struct{}),
		functions: slices.Clone(cfg.Functions),
		variables: slices.Clone(cfg.Variables),
		subs:      slices.Clone(cfg.Subscriptions),
	}, nil
}

// ID returns the device id.
func (d *Device) ID() keys.DeviceID { return d.cfg.DeviceID }

// Firmware returns the simulated firmware.
func (d *Device) Firmware() Firmware { return d.cfg.Firmware }

// PublicKey returns the device's public key, as a server's key store must
// know it (a Core never sends it; see Fleet.Provision for many devices).
func (d *Device) PublicKey() *rsa.PublicKey { return &d.key.PublicKey }

// Dial connects to addr over TCP and runs the device on that connection
// (see Run). It returns when the connection ends.
func (d *Device) Dial(ctx context.Context, addr string) error {
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("devsim: dial: %w", err)
	}
	return d.Run(ctx, conn)
}

// Run runs one connection of the device on conn, which it owns and closes:
// the handshake (spark-protocol.md §2), the Hello exchange, then serving the
// server's requests until ctx ends (Run returns nil) or the connection ends
// (Run returns why: ErrPeerClosed, ErrPingTimeout, ErrNoServerHello,
// ErrArgTooLong, ErrErrorAck, ErrProtocol or an error wrapping
// ErrHandshake, a frame error or an I/O error). Every goroutine it starts has
// ended when it returns. A Device runs one connection at a time: a second
// concurrent Run returns ErrRunning; sequential Runs model reconnections.
func (d *Device) Run(ctx context.Context, conn net.Conn) error {
	if !d.running.CompareAndSwap(false, true) {
		_ = conn.Close()
		return ErrRunning
	}
	defer d.running.Store(false)
	defer func() { _ = conn.Close() }()
	// A ctx does not unblock Read or Write; closing the conn does.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	sess, err := d.handshake(conn)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	err = newLink(d, conn, sess).run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Connected returns a channel that is closed once the device's current
// connection has completed its hello exchange: for a Photon when the server
// Hello has arrived, for a Core once its own Hello is queued (the Core waits
// for nothing). When that connection ends, later calls return a new channel.
func (d *Device) Connected() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ready
}

// WaitConnected blocks until the device is connected (see Connected) or ctx
// ends, and returns ctx's error then.
func (d *Device) WaitConnected(ctx context.Context) error {
	select {
	case <-d.Connected():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns a snapshot of the device's counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// SetFunctions replaces the application's functions; the next Describe and
// FunctionCall see the new set. (The simulated firmwares send no
// unsolicited Describe; the server learns of the change when it describes
// again.)
func (d *Device) SetFunctions(fns []Function) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.functions = slices.Clone(fns)
}

// SetVariables replaces the application's variables, like SetFunctions.
func (d *Device) SetVariables(vars []Variable) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.variables = slices.Clone(vars)
}

// Publish sends an event from the device (spark-protocol.md §4.4: NON POST
// e/<name> or E/<name> when private, the name in one option, Max-Age omitted
// when ttl is 60, the firmware's default). As the firmware does, a name
// longer than 63 bytes and data longer than 63 (Core) or 255 (Photon) bytes
// are truncated, and nil data sends no payload while empty non-nil data
// sends a bare payload marker. It returns once the event is queued for
// writing, ErrRateLimited for the 5th event within a second (unless
// Config.NoRateLimit), ErrNotConnected without a connection, or ctx's
// error.
func (d *Device) Publish(ctx context.Context, name string, data []byte, ttl uint32, private bool) error {
	l, err := d.eventLink()
	if err != nil {
		return err
	}
	return l.do(ctx, func() error { return l.publish(name, data, ttl, private) })
}

// Emit is Publish for load generation: it returns once the device's
// protocol loop has the event, without waiting for the loop to encode it and
// queue it for writing, which saves a hand-off back to the caller per event.
// What Publish would report after that point can only be the end of the
// connection, which Run reports. Errors: ErrNotConnected, ErrRateLimited,
// ctx's error.
func (d *Device) Emit(ctx context.Context, name string, data []byte, ttl uint32, private bool) error {
	l, err := d.eventLink()
	if err != nil {
		return err
	}
	select {
	case l.cmds <- func() { _ = l.publish(name, data, ttl, private) }:
		return nil
	case <-l.ctx.Done():
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
}

// eventLink is the connection an event goes out on, once the firmware's
// rate limit lets it: ErrNotConnected or ErrRateLimited otherwise.
func (d *Device) eventLink() (*link, error) {
	l := d.current()
	if l == nil {
		return nil, ErrNotConnected
	}
	if !d.allowEvent(time.Now()) {
		return nil, ErrRateLimited
	}
	return l, nil
}

// Subscribe adds an application subscription, like Particle.subscribe: it
// is sent at once when the application is running on a connection, and
// again after every connect. It returns once the Subscribe is queued, or
// ctx's error; without a connection it only records the subscription.
func (d *Device) Subscribe(ctx context.Context, s msg.Subscription) error {
	d.mu.Lock()
	d.subs = append(d.subs, s)
	l := d.link
	d.mu.Unlock()
	if l == nil {
		return nil
	}
	return l.do(ctx, func() error {
		if !l.appStarted || slices.Contains(l.subs, s) {
			return nil // sent (or to be sent) with the application's start
		}
		return l.subscribe(s)
	})
}

// SyncTime asks the server for the time (GetTime, spark-protocol.md §4.4)
// and waits for the answer. It returns ErrNotConnected without a connection
// or when the connection ends first, or ctx's error.
func (d *Device) SyncTime(ctx context.Context) (time.Time, error) {
	l := d.current()
	if l == nil {
		return time.Time{}, ErrNotConnected
	}
	ch := make(chan time.Time, 1)
	if err := l.do(ctx, func() error { return l.getTime(ch) }); err != nil {
		return time.Time{}, err
	}
	select {
	case t := <-ch:
		return t, nil
	case <-l.ctx.Done():
		return time.Time{}, ErrNotConnected
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// Ping sends a keepalive ping now (CON empty) and waits for the server's
// empty ACK with the same id. It returns ErrNotConnected without a
// connection or when the connection ends first, or ctx's error.
func (d *Device) Ping(ctx context.Context) error {
	l := d.current()
	if l == nil {
		return ErrNotConnected
	}
	ch := make(chan struct{}, 1)
	if err := l.do(ctx, func() error { return l.ping(ch) }); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-l.ctx.Done():
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *Device) current() *link {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.link
}

// setLink publishes l as the current connection and wakes WaitConnected.
func (d *Device) setLink(l *link) {
	d.mu.Lock()
	d.link = l
	d.stats.Connects++
	close(d.ready)
	up := d.onUp
	d.mu.Unlock()
	if up != nil {
		up()
	}
}

// clearLink forgets l when it ends.
func (d *Device) clearLink(l *link) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.link == l {
		d.link = nil
		d.ready = make(chan struct{})
	}
}

// rateBurst is the firmware's event burst: the 5th event within 1000 ms is
// refused (spark-protocol.md §5).
const rateBurst = 4

// allowEvent applies the rate limit, counting a refusal.
func (d *Device) allowEvent(now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.NoRateLimit {
		return true
	}
	// recent is a ring of the last rateBurst publish times; recentN is the
	// next slot, which holds the oldest of them once the ring is full.
	oldest := d.recent[d.recentN]
	if !oldest.IsZero() && now.Sub(oldest) < time.Second {
		d.stats.RateLimited++
		return false
	}
	d.recent[d.recentN] = now
	d.recentN = (d.recentN + 1) % rateBurst
	return true
}

func (d *Device) count(f func(s *Stats)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.stats)
}

// app returns the application's functions, variables and subscriptions.
func (d *Device) app() ([]Function, []Variable, []msg.Subscription) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.functions, d.variables, slices.Clone(d.subs)
}
