package devsim

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Function is a cloud function of the simulated application
// (Particle.function). Call runs on the device's loop goroutine, as user code
// runs on a single-threaded device: while it runs, the device answers
// nothing else (not even pings). ctx ends when the connection ends; a Call
// that blocks must return then, because Run waits for it.
type Function struct {
	Name string // at most 12 bytes are used (Describe and lookup); longer is truncated
	Call func(ctx context.Context, arg string) int32
}

// Variable is a cloud variable of the simulated application
// (Particle.variable). Get runs on the device's loop goroutine and must not
// block. The value is encoded with Type whatever Type Get sets
// (spark-protocol.md §4.4: int32 big-endian, double little-endian, bool one
// byte, string raw).
type Variable struct {
	Name string // at most 12 bytes are used, like Function.Name
	Type msg.VarType
	Get  func() msg.Value
}

// Config configures a Device. Firmware and ServerKey are required; the zero
// value of every other field is usable.
type Config struct {
	// Firmware selects the simulated device and code line (see Firmware).
	Firmware Firmware
	// DeviceID is the 12-byte device id. The zero id is allowed.
	DeviceID keys.DeviceID
	// DeviceKey is the device's RSA-1024 private key; nil uses SharedKey(),
	// one key generated per process (key generation is slow).
	DeviceKey *rsa.PrivateKey
	// ServerKey is the server's RSA-2048 public key the device is flashed
	// with (spark-protocol.md §1.5).
	ServerKey *rsa.PublicKey

	// Functions and Variables are the application's, in registration
	// order (the Describe lists them in this order). The application
	// registers them when it starts (see AppStartDelay); before that the
	// device has none. SetFunctions and SetVariables replace them.
	Functions []Function
	Variables []Variable
	// Subscriptions are the application's event subscriptions, sent as
	// Subscribe messages when the application starts on every connection.
	Subscriptions []msg.Subscription
	// OnEvent receives the events the server delivers that match one of
	// the application's subscription prefixes. It runs on the loop
	// goroutine and must not block.
	OnEvent func(msg.Event)
	// OnSignal receives Signal start (true) and stop (false). It runs on the
	// loop goroutine and must not block.
	OnSignal func(on bool)
	// App, when set, is the application's loop: it runs in its own
	// goroutine from the application's start until the connection ends
	// (ctx is then cancelled; Run waits for App to return). It typically
	// calls Publish periodically.
	App func(ctx context.Context, d *Device)

	// SystemMessages sends, on a Photon, what the recorded firmware sends
	// right after the server Hello: the private events
	// spark/hardware/max_binary and spark/hardware/ota_chunk_size, a
	// Subscribe to "spark" and a GetTime (session_fixture_photon0*.json).
	// The Core sends nothing of the kind.
	SystemMessages bool
	// AppStartDelay is the time from the hello exchange to the
	// application's setup(), which registers the functions and variables,
	// sends the Subscriptions and starts App. Zero starts it at once.
	AppStartDelay time.Duration
	// DescribeAtOnceEmpty also holds the application's start until the
	// server's first Describe has been answered (at most AppStartDelay + 5
	// s), so that this first answer is reliably empty, as on a real device
	// in AUTOMATIC mode (spark-protocol.md §2.4).
	DescribeAtOnceEmpty bool

	// PingInterval: the device pings after this long without receiving a
	// message (default 15 s; negative: never). PingTimeout: it drops the
	// connection when nothing arrives this long after its ping (default
	// 10 s). spark-protocol.md §5.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// HelloTimeout overrides how long a Photon waits for the server Hello
	// (default 2 s on Photon07, 4 s on Photon08; the Core never waits).
	HelloTimeout time.Duration
	// HandshakeTimeout bounds the handshake (default 20 s, the firmware's
	// limit per blocking step). WriteTimeout bounds each write (default
	// 20 s).
	HandshakeTimeout time.Duration
	WriteTimeout     time.Duration

	// NoRateLimit turns off the firmware's event rate limit (4 per second;
	// spark-protocol.md §5), e.g. for load tests.
	NoRateLimit bool
	// Rand is the randomness of the handshake's RSA encryption; nil means
	// crypto/rand.
	Rand io.Reader
	// Logger receives Debug lines; nil discards them.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultPingInterval     = 15 * time.Second
	DefaultPingTimeout      = 10 * time.Second
	DefaultHandshakeTimeout = 20 * time.Second
	DefaultWriteTimeout     = 20 * time.Second
)

// describeWait caps how long DescribeAtOnceEmpty holds the application
// start after AppStartDelay when the server sends no Describe.
const describeWait = 5 * time.Second

func (c Config) withDefaults() Config {
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if _, ok := c.Firmware.quirks(); !ok {
		return fmt.Errorf("%w: Firmware %v", ErrConfig, c.Firmware)
	}
	if c.ServerKey == nil {
		return fmt.Errorf("%w: ServerKey is nil", ErrConfig)
	}
	for _, f := range c.Functions {
		if f.Name == "" || f.Call == nil {
			return fmt.Errorf("%w: function %q needs a name and Call", ErrConfig, f.Name)
		}
	}
	for _, v := range c.Variables {
		if v.Name == "" || v.Get == nil {
			return fmt.Errorf("%w: variable %q needs a name and Get", ErrConfig, v.Name)
		}
	}
	return nil
}

// sharedKey is generated once per process, on first use: RSA-1024
// generation takes several milliseconds, and tests and fleets create many
// devices. It is immutable once made.
var sharedKey = sync.OnceValues(func() (*rsa.PrivateKey, error) {
	return GenerateKey()
})

// SharedKey returns the device key used when Config.DeviceKey is nil: one
// RSA-1024 key generated on the first call and reused for the life of the
// process. It is safe for concurrent use.
func SharedKey() (*rsa.PrivateKey, error) {
	return sharedKey()
}

// GenerateKey returns a new RSA-1024 device key with e = 65537, the only
// kind the firmware handles (spark-protocol.md §1.2).
func GenerateKey() (*rsa.PrivateKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		return nil, fmt.Errorf("devsim: generate device key: %w", err)
	}
	return k, nil
}
