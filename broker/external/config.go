package external

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultKeepAlive      = 30 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultReconnectMin   = 1 * time.Second
	DefaultReconnectMax   = 30 * time.Second
	DefaultBufferSize     = 10000
	DefaultQueueSize      = 1024

	// MaxPacketSizeLimit is the largest packet MQTT 3.1.1 can express: a
	// 1-byte fixed header, a 4-byte remaining length and 268,435,455 bytes.
	// It is the default for Config.MaxPacketSize because a 3.1.1 broker does
	// not tell its limit.
	MaxPacketSizeLimit = 1 + 4 + 268435455
)

// Config configures a Client. The zero value of every field but URL is
// usable: New fills in the defaults above.
type Config struct {
	// URL is the broker's address. Schemes: tcp:// and mqtt:// (port 1883
	// by default); ssl://, tls:// and mqtts:// (TLS, port 8883); ws://
	// (port 80) and wss:// (port 443), whose path is kept (e.g.
	// ws://host:9001/mqtt). A user name and password in the URL are used
	// when Username is empty; they are never logged.
	URL string

	// Username and Password authenticate the client (MQTT CONNECT).
	Username string
	Password string

	// ClientID is the MQTT client identifier. Empty means
	// "spark2mqtt-<8 random hex digits>", which is only allowed without a
	// persistent session.
	ClientID string

	// PersistentSession asks the broker to keep the session (CleanSession
	// = false): QoS 1 messages for our subscriptions published while we are
	// away are queued for us. The client re-subscribes after every connect
	// either way, so a broker that lost its state (restarted without
	// persistence) is handled too. Needs a fixed ClientID.
	PersistentSession bool

	// CAFile is a PEM file of the certificate authorities that sign the
	// broker's certificate (ssl://, wss://). Empty means the system roots.
	CAFile string
	// CertFile and KeyFile are the client's certificate and key (PEM), for
	// brokers that require one. Both or neither.
	CertFile string
	KeyFile  string
	// InsecureSkipVerify turns off verification of the broker's
	// certificate. Anyone on the path can then read and change the
	// traffic, credentials included; New logs a warning saying so.
	InsecureSkipVerify bool

	// Will is published by the broker when the connection drops without a
	// DISCONNECT (the bridge uses spark/bridge/state = "offline", QoS 1,
	// retained). Nil means no will. ResponseTopic and CorrelationData are
	// ignored.
	Will *broker.Message

	// KeepAlive is the MQTT keep-alive interval (PINGREQ when nothing was
	// received for that long). A dead connection is noticed after at most
	// twice KeepAlive: one interval of silence, one more for the PINGRESP.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt (dial, TLS, CONNECT ↔
	// CONNACK) and waits for SUBACKs after a reconnect; it is also the write
	// timeout of the connection.
	ConnectTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the delay between connection
	// attempts: it doubles from ReconnectMin after each failure up to
	// ReconnectMax, with jitter (between half and all of it).
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// BufferSize is how many QoS 1 and 2 messages are held while the broker
	// is unreachable (then sent, in order, after the reconnect). When it is
	// full, Publish refuses new messages with broker.ErrBufferFull (counted
	// in Stats.BufferFull); a retained message replaces an older buffered
	// retained message for the same topic instead of taking a new slot.
	// See the package documentation for why.
	BufferSize int

	// QueueSize is the capacity of each subscription's hand-off queue
	// between the network and the handler. Messages that find it full are
	// dropped and counted (Stats.Dropped).
	QueueSize int

	// MaxPacketSize is the largest MQTT packet the broker accepts (set it
	// to Mosquitto's max_packet_size or message_size_limit). Publish
	// refuses larger messages with broker.ErrTooLarge instead of sending
	// them and being disconnected. Zero means the protocol's limit.
	MaxPacketSize int

	// OnConnect, when set, is called after every successful connection
	// (the first included) once the subscriptions are restored: the bridge
	// republishes its retained state there. It runs on its own goroutine,
	// calls never overlap, and it may call Publish and Subscribe; it must
	// return (Close waits for it).
	OnConnect func()

	// Logger receives the client's lifecycle lines. Nil discards them.
	Logger *slog.Logger
}

// withDefaults returns cfg with zero fields set to their defaults.
func (cfg Config) withDefaults() Config {
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = DefaultReconnectMin
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = DefaultReconnectMax
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		cfg.ReconnectMax = cfg.ReconnectMin
	}
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = DefaultBufferSize
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.MaxPacketSize <= 0 || cfg.MaxPacketSize > MaxPacketSizeLimit {
		cfg.MaxPacketSize = MaxPacketSizeLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// schemes maps the accepted URL schemes to the canonical one we dial and
// its default port.
var schemes = map[string]struct {
	canonical string
	port      string
}{
	"tcp":   {"tcp", "1883"},
	"mqtt":  {"tcp", "1883"},
	"ssl":   {"ssl", "8883"},
	"tls":   {"ssl", "8883"},
	"mqtts": {"ssl", "8883"},
	"ws":    {"ws", "80"},
	"wss":   {"wss", "443"},
}

// ParseURL checks a broker URL and returns it normalised: the scheme is one
// of tcp, ssl, ws and wss, and the host carries a port. Errors wrap
// ErrBadURL and say what is wrong; they never contain the password.
func ParseURL(raw string) (*url.URL, error) {
	bad := func(format string, args ...any) (*url.URL, error) {
		return nil, fmt.Errorf("%w: %s", ErrBadURL, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(raw) == "" {
		return bad("empty (want e.g. tcp://localhost:1883)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, password included
		}
		return bad("%v", err)
	}
	if u.Scheme == "" {
		return bad("no scheme (want tcp://, mqtt://, ssl://, tls://, mqtts://, ws:// or wss://)")
	}
	s, ok := schemes[strings.ToLower(u.Scheme)]
	if !ok {
		if u.Opaque != "" && !strings.Contains(raw, "//") {
			return bad("unknown scheme %q (a host:port needs a scheme: tcp://%s)", u.Scheme, raw)
		}
		return bad("unknown scheme %q (want tcp, mqtt, ssl, tls, mqtts, ws or wss)", u.Scheme)
	}
	if u.Opaque != "" {
		return bad("%s: missing // before the host", u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return bad("no host")
	}
	if !validHost(host) {
		return bad("bad host %q", host)
	}
	port := u.Port()
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return bad("empty port")
		}
		port = s.port
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad("port %q out of range 1-65535", port)
	}
	out := &url.URL{Scheme: s.canonical, Host: net.JoinHostPort(host, port), User: u.User}
	switch s.canonical {
	case "ws", "wss":
		out.Path, out.RawPath, out.RawQuery = u.Path, u.RawPath, u.RawQuery
	default:
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return bad("%s:// takes no path or query (only ws:// and wss:// do)", u.Scheme)
		}
	}
	if u.Fragment != "" {
		return bad("a fragment (#...) is not allowed")
	}
	return out, nil
}

// validHost accepts an IP address (IPv6 with a zone too) or a host name of
// letters, digits, '-', '_' and '.'.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	for _, r := range h {
		ok := r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !ok {
			return false
		}
	}
	return true
}

// settings is what New derives from a Config once.
type settings struct {
	url      *url.URL // normalised, without user info
	addr     string   // host:port, for logs
	user     string
	pass     string
	tls      *tls.Config // nil for tcp:// and ws://
	clientID string
}

func newClientID() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "spark2mqtt-" + hex.EncodeToString(b[:])
}

// prepare validates cfg (after withDefaults) and loads its files.
func prepare(cfg Config) (settings, error) {
	var st settings
	u, err := ParseURL(cfg.URL)
	if err != nil {
		return st, err
	}
	st.user, st.pass = cfg.Username, cfg.Password
	if u.User != nil && st.user == "" {
		st.user = u.User.Username()
		st.pass, _ = u.User.Password()
	}
	u.User = nil
	st.url, st.addr = u, u.Host

	st.clientID = cfg.ClientID
	if st.clientID == "" {
		if cfg.PersistentSession {
			return st, fmt.Errorf("%w: a persistent session needs a client id", ErrConfig)
		}
		st.clientID = newClientID()
	}
	if len(st.clientID) > 65535 {
		return st, fmt.Errorf("%w: client id longer than 65535 bytes", ErrConfig)
	}
	if w := cfg.Will; w != nil {
		if err := checkTopic(w.Topic); err != nil {
			return st, fmt.Errorf("%w: will topic %q: %w", ErrConfig, w.Topic, err)
		}
		if w.QoS > 2 {
			return st, fmt.Errorf("%w: will: %w", ErrConfig, ErrBadQoS)
		}
	}

	secure := u.Scheme == "ssl" || u.Scheme == "wss"
	if !secure {
		if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.InsecureSkipVerify {
			return st, fmt.Errorf("%w: CA file, client certificate and insecure-skip-verify need an ssl://, tls://, mqtts:// or wss:// URL, not %s://", ErrConfig, u.Scheme)
		}
		return st, nil
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         u.Hostname(),
		InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // opt-in, logged loudly by New
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return st, fmt.Errorf("%w: %w", ErrCAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return st, fmt.Errorf("%w: %s holds no PEM certificate", ErrCAFile, cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case cfg.CertFile != "" && cfg.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return st, fmt.Errorf("%w: %w", ErrClientCert, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case cfg.CertFile != "" || cfg.KeyFile != "":
		return st, fmt.Errorf("%w: a client certificate needs both the certificate and the key file", ErrConfig)
	}
	st.tls = tc
	return st, nil
}
