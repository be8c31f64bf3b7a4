package bridge

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Defaults for a zero Config.
const (
	DefaultBaseTopic       = "spark"
	DefaultPollInterval    = 30 * time.Second
	DefaultCallTimeout     = 30 * time.Second
	DefaultQueueTTL        = time.Hour
	DefaultMaxTTL          = 7 * 24 * time.Hour
	DefaultInventoryDelay  = 500 * time.Millisecond
	DefaultExpiryCheck     = time.Second
	DefaultPublishTimeout  = 10 * time.Second
	DefaultShutdownTimeout = 10 * time.Second
	DefaultSyncTimeout     = 5 * time.Second
	DefaultInboundQueue    = 8192
	DefaultEventQueue      = 8192

	// DefaultDiscoveryPrefix is Home Assistant's default discovery prefix.
	DefaultDiscoveryPrefix = "homeassistant"
	// DefaultDiscoveryDelayMin and DefaultDiscoveryDelayMax bound the random
	// delay between Home Assistant's "online" and the re-announcement.
	DefaultDiscoveryDelayMin = time.Second
	DefaultDiscoveryDelayMax = 5 * time.Second

	// MinPollInterval is the shortest poll interval accepted, in the
	// Config and in the devices file: a Core handles one request at a time.
	MinPollInterval = time.Second
	// MinFreshness is the lower bound of the freshness window (see Config.Freshness).
	MinFreshness = 5 * time.Minute
)

// Config configures a Bridge. The zero value of every field but Client
// means its default; cmd builds it from the environment.
type Config struct {
	// Client is the broker connection. Required. The Bridge never closes it.
	Client broker.Client
	// BaseTopic is the first topic level(s) of every topic ("spark").
	BaseTopic string
	// PollInterval is how often a variable of an online device is read
	// (default 30 s). A negative value turns polling off (values are read on
	// `get` only). The devices file overrides it per device and variable.
	PollInterval time.Duration
	// CallTimeout bounds one device request (call, read, describe, signal).
	CallTimeout time.Duration
	// QueueTTL is how long a call for an offline device is held when the
	// request names no ttl (default 1 h).
	QueueTTL time.Duration
	// MaxTTL is the largest ttl a request may ask for (default 7 days);
	// larger ones get an error result.
	MaxTTL time.Duration
	// Devices names devices and overrides poll intervals. Nil means none.
	Devices *DevicesFile
	// Known reports whether a device id that the bridge has not seen is
	// known anyway (cmd passes a key store lookup), so calls for it are held
	// while it is offline. Nil means only devices in the devices file, seen
	// by this process or restored from the broker are known.
	Known func(id string) bool
	// SystemEvents publishes the device's system events (names starting
	// with "spark" or "particle") on spark/D/event/... too. Off by default:
	// they are protocol housekeeping, and the original cloud swallowed them.
	SystemEvents bool
	// Discovery publishes Home Assistant MQTT discovery for the devices
	// (package hass; off in a zero Config, on by default in cmd).
	Discovery bool
	// DiscoveryPrefix is Home Assistant's discovery prefix
	// ("homeassistant"): configs go to <prefix>/device/<id>/config, and
	// <prefix>/status "online" makes the bridge announce them again.
	DiscoveryPrefix string
	// DiscoveryDelayMin and DiscoveryDelayMax bound the random delay of the
	// re-announcement after Home Assistant says "online" (1 s and 5 s).
	DiscoveryDelayMin, DiscoveryDelayMax time.Duration
	// Version is spark2mqtt's version, named in the discovery's origin.
	Version string
	// Logger receives the bridge's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// InventoryDelay debounces spark/bridge/devices.
	InventoryDelay time.Duration
	// ExpiryCheck is how often held calls are checked for expiry.
	ExpiryCheck time.Duration
	// PublishTimeout bounds one publish.
	PublishTimeout time.Duration
	// ShutdownTimeout bounds the publishes Run makes after its context is
	// done (held calls, availability, bridge state).
	ShutdownTimeout time.Duration
	// SyncTimeout bounds the wait for the retained state at start.
	SyncTimeout time.Duration
	// InboundQueue is the capacity of the queue between the broker's
	// handlers and the dispatcher; a message that finds it full is dropped,
	// counted and logged.
	InboundQueue int
	// EventQueue is the capacity of the queue of device events; when full the
	// oldest event is dropped and counted.
	EventQueue int
}

func (c Config) withDefaults() Config {
	if c.BaseTopic == "" {
		c.BaseTopic = DefaultBaseTopic
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&c.CallTimeout, DefaultCallTimeout)
	setDur(&c.QueueTTL, DefaultQueueTTL)
	setDur(&c.MaxTTL, DefaultMaxTTL)
	setDur(&c.InventoryDelay, DefaultInventoryDelay)
	setDur(&c.ExpiryCheck, DefaultExpiryCheck)
	setDur(&c.PublishTimeout, DefaultPublishTimeout)
	setDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDur(&c.SyncTimeout, DefaultSyncTimeout)
	if c.DiscoveryPrefix == "" {
		c.DiscoveryPrefix = DefaultDiscoveryPrefix
	}
	if c.DiscoveryDelayMin == 0 && c.DiscoveryDelayMax == 0 {
		c.DiscoveryDelayMin, c.DiscoveryDelayMax = DefaultDiscoveryDelayMin, DefaultDiscoveryDelayMax
	}
	if c.InboundQueue == 0 {
		c.InboundQueue = DefaultInboundQueue
	}
	if c.EventQueue == 0 {
		c.EventQueue = DefaultEventQueue
	}
	if c.Devices == nil {
		c.Devices = &DevicesFile{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	if c.Client == nil {
		return fmt.Errorf("%w: Client is nil", ErrConfig)
	}
	if err := validBaseTopic(c.BaseTopic); err != nil {
		return fmt.Errorf("%w: BaseTopic: %w", ErrConfig, err)
	}
	if c.PollInterval > 0 && c.PollInterval < MinPollInterval {
		return fmt.Errorf("%w: PollInterval %v is below %v", ErrConfig, c.PollInterval, MinPollInterval)
	}
	if c.QueueTTL < 0 || c.QueueTTL > c.MaxTTL {
		return fmt.Errorf("%w: QueueTTL %v is not within 0..MaxTTL (%v)", ErrConfig, c.QueueTTL, c.MaxTTL)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"CallTimeout", c.CallTimeout}, {"MaxTTL", c.MaxTTL},
		{"InventoryDelay", c.InventoryDelay}, {"ExpiryCheck", c.ExpiryCheck},
		{"PublishTimeout", c.PublishTimeout}, {"ShutdownTimeout", c.ShutdownTimeout},
		{"SyncTimeout", c.SyncTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("%w: %s is negative", ErrConfig, d.name)
		}
	}
	if c.InboundQueue < 0 || c.EventQueue < 0 {
		return fmt.Errorf("%w: negative queue size", ErrConfig)
	}
	if err := validBaseTopic(c.DiscoveryPrefix); err != nil {
		return fmt.Errorf("%w: DiscoveryPrefix: %w", ErrConfig, err)
	}
	if c.DiscoveryDelayMin < 0 || c.DiscoveryDelayMax < c.DiscoveryDelayMin {
		return fmt.Errorf("%w: DiscoveryDelayMin %v and DiscoveryDelayMax %v: want 0 <= min <= max", ErrConfig, c.DiscoveryDelayMin, c.DiscoveryDelayMax)
	}
	return nil
}

// validBaseTopic accepts one or more non-empty topic levels.
func validBaseTopic(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrTopicLevel)
	}
	for lvl := range strings.SplitSeq(s, "/") {
		if err := ValidLevel(lvl); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	return nil
}

// Freshness returns how long an unchanged variable value may go without
// being published again for a poll interval p: max(10×p, MinFreshness).
// A poll that reads the same value within it publishes nothing; one after
// it republishes the value (retained), so a subscriber can tell a live
// value from a stale one by the message's arrival.
func Freshness(p time.Duration) time.Duration {
	return max(10*p, MinFreshness)
}
