package bridge

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Device is the bridge's view of one connected device session. The
// adapter returned by NewDevice satisfies it for a *coapdev.Session; tests
// may satisfy it with anything else. Values must be comparable (pointers or
// structs of pointers): the bridge tells sessions apart with ==.
//
// The request methods block until the device answers, ctx is done or the
// session ends. Their errors wrap ErrNotFound for a function or variable the
// device does not have (after describing it again once, so a function
// registered late is found), ErrArgTooLong for an argument over the
// device's limit and ErrGone once the session has ended; other errors are
// reported to the user as they are.
type Device interface {
	// ID returns the device id, 24 hex digits.
	ID() string
	// Describe returns the functions and variables of the device's running
	// application; it waits until the application has registered them
	// (spark-protocol.md §2.4: an answer right after the Hello is empty).
	Describe(ctx context.Context) (msg.Description, error)
	// Call calls function fn with arg and returns its return value.
	Call(ctx context.Context, fn, arg string) (int32, error)
	// Get reads variable name.
	Get(ctx context.Context, name string) (msg.Value, error)
	// Send delivers an event to the device. It must not block for long (the
	// bridge calls it for many devices in turn).
	Send(ctx context.Context, e msg.Event) error
	// Signal starts (on) or stops the device's rainbow LED.
	Signal(ctx context.Context, on bool) error
	// Done is closed when the session has ended.
	Done() <-chan struct{}
}

// Errors a Device's methods wrap (see Device).
var (
	// ErrNotFound: the device has no such function or variable.
	ErrNotFound = errors.New("bridge: no such function or variable")
	// ErrArgTooLong: the argument is over the device's limit.
	ErrArgTooLong = errors.New("bridge: argument too long")
	// ErrGone: the session ended before the device answered.
	ErrGone = errors.New("bridge: device session ended")
	// ErrNotSent: the request was certainly not sent (the session had ended
	// already); the bridge queues the call again for the next session.
	ErrNotSent = errors.New("bridge: request not sent")
)

// DeviceInfo is what the device told about itself in its Hello, for the
// inventory (spark/bridge/devices). Every field may be zero.
type DeviceInfo struct {
	// Kind is "core" or "photon" (the handshake kind).
	Kind string
	// ProductID, ProductVersion and PlatformID are the Hello's fields;
	// PlatformID is valid when HasPlatform.
	ProductID, ProductVersion uint16
	PlatformID                uint16
	HasPlatform               bool
	// Remote is the device's address.
	Remote string
	// ConnectedAt is when the session started; zero means now.
	ConnectedAt time.Time
	// MaxArg is the device's argument limit in bytes, 0 when unknown.
	MaxArg int
}

// hardMaxArg is the largest argument any device accepts
// (spark-protocol.md §4: 622 bytes on newer Photons, 63 on the Core).
const hardMaxArg = 622

// coreMaxArg is the Core's argument limit.
const coreMaxArg = 63

// maxArg returns the argument limit to check before holding a call.
func (i DeviceInfo) maxArg() int {
	switch {
	case i.MaxArg > 0:
		return min(i.MaxArg, hardMaxArg)
	case i.Kind == "core":
		return coreMaxArg
	}
	return hardMaxArg
}

// maxQueued bounds the distinct functions with a waiting call per device
// (one call per function is kept, the newest).
const maxQueued = 64

// maxGets bounds the distinct variables with a waiting `get` per session.
const maxGets = 64

// maxResponders bounds the MQTT 5 responses waiting for one variable read.
const maxResponders = 256

// dev is the bridge's state of one known device. It outlives sessions.
type dev struct {
	// Immutable after creation.
	id    string
	topic string // the level D: the configured name, else the id

	// pubMu serialises the publishes of this device's retained state (its
	// availability, var/NAME, fn/NAME/result and fn/NAME/pending topics) so
	// the broker sees them in the order of the state changes. It is held
	// across Publish: the one lock the bridge holds across I/O, and only ever
	// for this device's own publishes. Lock order: pubMu before mu.
	pubMu sync.Mutex
	// Guarded by pubMu.
	pendingOwner map[string]*call // fn → the call whose pending message is retained

	mu sync.Mutex
	// Guarded by mu.
	sess     *session         // the current session, nil while offline
	last     *session         // the most recent session, current or ended
	info     DeviceInfo       // from the last session (or restored)
	desc     *msg.Description // the last settled description, nil when unknown
	lastSeen time.Time        // last session start or end
	listed   bool             // shown in the inventory (seen, restored or configured)
	calls    map[string]*call // fn → the waiting call, newest wins (bounded by maxQueued)
	vars     map[string]*varState
}

func newDev(id, topic string) *dev {
	return &dev{
		id: id, topic: topic,
		pendingOwner: map[string]*call{},
		calls:        map[string]*call{},
		vars:         map[string]*varState{},
	}
}

// Description phases of a session: calls and reads wait until the first
// Describe has returned.
type descPhase uint8

const (
	phaseNone    descPhase = iota // not described yet
	phaseSettled                  // described (dev.desc holds it)
	phaseBlind                    // describing failed: go without (the device answers NotFound itself)
)

// session is one device session as the bridge sees it.
type session struct {
	// Immutable after creation.
	d      Device
	info   DeviceInfo
	ctx    context.Context // cancelled when the session ends or the bridge's stop deadline passes
	cancel context.CancelFunc
	ended  chan struct{} // closed by end (once)
	exited chan struct{} // closed when the worker returns (or never started and the bridge ended)
	wake   chan struct{} // cap 1; never closed
	prev   *session      // the session this one replaced; its worker finishes first
	once   sync.Once

	// Guarded by dev.mu.
	phase   descPhase
	signal  int8                   // 0 none, 1 on, -1 off: the newest wins
	gets    map[string][]responder // forced reads waiting, by variable (bounded by maxGets)
	reading string                 // variable being read now ("" none); gets for it join
	worker  bool                   // a worker goroutine was started
}

func (s *session) end() {
	s.once.Do(func() {
		close(s.ended)
		s.cancel()
	})
}

func (s *session) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// varState is the cache of one variable.
type varState struct {
	typ         msg.VarType
	text        string
	has         bool
	publishedAt time.Time
	nextPoll    time.Time
}

// responder is an MQTT 5 response address.
type responder struct {
	topic string
	corr  []byte
}
