package embedded

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Defaults of Config.
const (
	DefaultAddr                = ":1883"
	DefaultTLSAddr             = ":8883"
	DefaultMaxPacketSize       = 256 << 10
	DefaultClientWritesPending = 256
	DefaultQueueSize           = 1024
	DefaultSessionExpiry       = 7 * 24 * time.Hour
	DefaultConnectTimeout      = 10 * time.Second
	DefaultWriteTimeout        = 10 * time.Second
	DefaultBaseTopic           = "spark"
	DefaultSysTopicInterval    = 30 * time.Second
)

// Config configures a Broker. The zero value is usable: a plain TCP listener
// on :1883, anonymous clients from loopback addresses only, no persistence.
type Config struct {
	// Addr is the plain MQTT TCP listen address. Default ":1883"; tests use
	// "127.0.0.1:0" and read the bound address back with Broker.Addr.
	Addr string

	// TLSCertFile and TLSKeyFile (PEM) enable an MQTT-over-TLS listener on
	// TLSAddr (default ":8883"). Both or neither.
	TLSCertFile string
	TLSKeyFile  string
	TLSAddr     string

	// WebSocketAddr, when set, adds an MQTT-over-WebSocket listener
	// (plain ws://, any path, subprotocol "mqtt").
	WebSocketAddr string

	// DataDir, when set, makes the broker persistent: retained messages,
	// client sessions and their subscriptions, and in-flight QoS 1 and 2
	// messages are kept in DataDir/mqtt (badger) and survive a restart.
	DataDir string

	// UsersFile is the path of the users file (YAML, see LoadUsers). Empty
	// means no accounts: anonymous clients may connect from loopback
	// addresses only.
	UsersFile string

	// BaseTopic is the bridge's topic root (default "spark"); it places the
	// topics only the bridge may write (see ProtectedTopics).
	BaseTopic string

	// ProtectedTopics are the filters no MQTT client may publish to, whatever
	// the users file says: only the bridge, in-process, writes them. Nil
	// means DefaultProtected(BaseTopic).
	ProtectedTopics []string

	// Will, when set, is the bridge's last will (spark/bridge/state =
	// offline). In-process there is no connection to lose: the broker
	// publishes it at Start (the state is unknown until the bridge says
	// otherwise, e.g. after a crash left "online" retained in DataDir) and
	// at Close, before it stops its listeners, so connected clients see it.
	// Client.Close does not publish it.
	Will *broker.Message

	// MaxPacketSize is the largest MQTT packet the broker accepts or the
	// inline client publishes (default 256 KiB). Clients learn it from the
	// MQTT 5 CONNACK; larger packets from them end their connection.
	MaxPacketSize int

	// ClientWritesPending is the capacity of one network client's write
	// queue (mochi's MaximumClientWritesPending, allocated at connect: 8
	// bytes a slot; mochi's default 8192 costs 64 KiB per client). When it is
	// three quarters full, whoever delivers to that client waits for it to
	// drain (see pacer), so bursts are not lost; a client that does not
	// drain it within 5 s has messages dropped (counted in
	// Stats.ClientDropped) until it catches up. Default 256.
	ClientWritesPending int

	// QueueSize bounds the hand-off queue of each inline subscription
	// (default 1024). When a handler falls that far behind, the oldest
	// queued message is dropped and counted.
	QueueSize int

	// SessionExpiry is how long the session of a disconnected client that
	// asked for a persistent session is kept when the client does not say
	// (MQTT 3.1.1 clients never do). Default 7 days.
	SessionExpiry time.Duration

	// ConnectTimeout bounds the time a new connection has to send CONNECT.
	// Default 10s.
	ConnectTimeout time.Duration

	// WriteTimeout bounds one write to a network client; a client that
	// does not take a packet within it is disconnected as a slow peer.
	// Default 10s.
	WriteTimeout time.Duration

	// SysTopicInterval is the period of the $SYS/broker/... statistics
	// (default 30s; each refresh reads runtime.MemStats).
	SysTopicInterval time.Duration

	// Logger receives the broker's lifecycle lines. Nil discards.
	Logger *slog.Logger
}

// DefaultProtected returns the filters below base that only the bridge may
// write: the bridge's own state, device availability, variable values,
// function results and pending calls, and device events.
func DefaultProtected(base string) []string {
	return []string{
		base + "/bridge/#",
		base + "/+/availability",
		base + "/+/var/+",
		base + "/+/fn/+/result",
		base + "/+/fn/+/pending",
		base + "/+/event/#",
	}
}

func (c Config) withDefaults() Config {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.TLSAddr == "" {
		c.TLSAddr = DefaultTLSAddr
	}
	if c.BaseTopic == "" {
		c.BaseTopic = DefaultBaseTopic
	}
	if c.ProtectedTopics == nil {
		c.ProtectedTopics = DefaultProtected(c.BaseTopic)
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = DefaultMaxPacketSize
	}
	if c.ClientWritesPending == 0 {
		c.ClientWritesPending = DefaultClientWritesPending
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.SessionExpiry == 0 {
		c.SessionExpiry = DefaultSessionExpiry
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.SysTopicInterval == 0 {
		c.SysTopicInterval = DefaultSysTopicInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		return fmt.Errorf("%w: TLS needs both a certificate and a key file", ErrConfig)
	case c.MaxPacketSize < 1024 || c.MaxPacketSize > 268435455:
		return fmt.Errorf("%w: max packet size %d outside 1 KiB..256 MiB", ErrConfig, c.MaxPacketSize)
	case c.ClientWritesPending < 1 || c.ClientWritesPending > 1<<20:
		return fmt.Errorf("%w: client writes pending %d outside 1..1048576", ErrConfig, c.ClientWritesPending)
	case c.QueueSize < 1:
		return fmt.Errorf("%w: queue size %d", ErrConfig, c.QueueSize)
	case c.SessionExpiry < time.Second || c.ConnectTimeout < 0 || c.WriteTimeout < 0 || c.SysTopicInterval < time.Second:
		return fmt.Errorf("%w: durations out of range", ErrConfig)
	case !validTopic(c.BaseTopic):
		return fmt.Errorf("%w: base topic %q", ErrConfig, c.BaseTopic)
	}
	for _, f := range c.ProtectedTopics {
		if !validFilter(f) {
			return fmt.Errorf("%w: protected topic filter %q", ErrConfig, f)
		}
	}
	if c.Will != nil && !validTopic(c.Will.Topic) {
		return fmt.Errorf("%w: will topic %q", ErrConfig, c.Will.Topic)
	}
	return nil
}
