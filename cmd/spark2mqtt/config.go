package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// envPrefix is the prefix of every environment variable spark2mqtt reads.
const envPrefix = "SPARK2MQTT"

// config is the whole configuration of spark2mqtt, read from the environment
// in one place (loadConfig) and handed to the packages as plain values.
type config struct {
	DeviceListen     string        `envconfig:"DEVICE_LISTEN" default:":5683" desc:"TCP address the Spark devices connect to"`
	DataDir          string        `envconfig:"DATA_DIR" default:"data" desc:"directory for the server key, device keys, the devices file and the embedded broker's storage"`
	KeyMode          string        `envconfig:"KEY_MODE" default:"strict" desc:"device keys: strict (only registered devices) or tofu (record a new Photon's key on first connect)"`
	HandshakeTimeout time.Duration `envconfig:"HANDSHAKE_TIMEOUT" default:"30s" desc:"time a device has to complete the handshake and send its Hello"`
	IdleTimeout      time.Duration `envconfig:"IDLE_TIMEOUT" default:"40s" desc:"a device session silent this long is closed (devices ping every 15 s)"`

	MQTTURL                string `envconfig:"MQTT_URL" desc:"external broker (tcp://, ssl://, ws://, wss://host:port); empty runs the embedded broker"`
	MQTTListen             string `envconfig:"MQTT_LISTEN" default:":1883" desc:"embedded broker: MQTT TCP listen address"`
	MQTTWSListen           string `envconfig:"MQTT_WS_LISTEN" desc:"embedded broker: MQTT over WebSocket listen address (empty = off)"`
	MQTTTLSCert            string `envconfig:"MQTT_TLS_CERT" desc:"embedded broker: TLS certificate file (PEM); with MQTT_TLS_KEY an MQTT-over-TLS listener runs on MQTT_TLS_LISTEN"`
	MQTTTLSListen          string `envconfig:"MQTT_TLS_LISTEN" default:":8883" desc:"embedded broker: MQTT-over-TLS listen address (used with MQTT_TLS_CERT and MQTT_TLS_KEY)"`
	MQTTTLSKey             string `envconfig:"MQTT_TLS_KEY" desc:"embedded broker: TLS private key file (PEM)"`
	MQTTUsersFile          string `envconfig:"MQTT_USERS_FILE" desc:"embedded broker: users and topic ACLs (YAML); empty = anonymous clients from loopback only"`
	MQTTUsername           string `envconfig:"MQTT_USERNAME" desc:"external broker: user name (also the login of spark2mqtt devices to the embedded broker when it has a users file)"`
	MQTTPassword           string `envconfig:"MQTT_PASSWORD" desc:"external broker: password (also for spark2mqtt devices, as MQTT_USERNAME)"`
	MQTTPasswordFile       string `envconfig:"MQTT_PASSWORD_FILE" desc:"external broker: file holding the password (instead of MQTT_PASSWORD)"`
	MQTTClientID           string `envconfig:"MQTT_CLIENT_ID" default:"spark2mqtt" desc:"external broker: MQTT client id"`
	MQTTCAFile             string `envconfig:"MQTT_CA_FILE" desc:"external broker: CA certificates (PEM) to verify the broker"`
	MQTTClientCert         string `envconfig:"MQTT_CLIENT_CERT" desc:"external broker: client certificate (PEM)"`
	MQTTClientKey          string `envconfig:"MQTT_CLIENT_KEY" desc:"external broker: client private key (PEM)"`
	MQTTInsecureSkipVerify bool   `envconfig:"MQTT_INSECURE_SKIP_VERIFY" default:"false" desc:"external broker: do not verify the broker's certificate (unsafe)"`

	BaseTopic    string        `envconfig:"BASE_TOPIC" default:"spark" desc:"first level of every spark2mqtt topic"`
	PollInterval time.Duration `envconfig:"POLL_INTERVAL" default:"30s" desc:"how often variables are read while a device is online"`
	CallTimeout  time.Duration `envconfig:"CALL_TIMEOUT" default:"30s" desc:"how long a function call or variable read waits for the device"`
	QueueTTL     time.Duration `envconfig:"QUEUE_TTL" default:"1h" desc:"how long a call for an offline device is held (per call: ttl in /call)"`

	HADiscovery bool   `envconfig:"HA_DISCOVERY" default:"true" desc:"publish Home Assistant MQTT discovery"`
	HAPrefix    string `envconfig:"HA_PREFIX" default:"homeassistant" desc:"Home Assistant discovery prefix"`

	LogLevel        string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat       string        `envconfig:"LOG_FORMAT" default:"text" desc:"text or json"`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"10s" desc:"time allowed for a clean stop after SIGINT/SIGTERM"`
}

// errConfig marks configuration errors; main exits with status 2 on them.
var errConfig = errors.New("configuration")

// loadConfig reads the configuration from the environment, refuses unknown
// SPARK2MQTT_ variables (naming all of them), resolves *_FILE secrets and
// validates the values.
func loadConfig() (config, error) {
	var c config
	if err := checkUnknown(); err != nil {
		return c, err
	}
	if err := envconfig.Process(envPrefix, &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return c, fmt.Errorf("%w: %s_%s=%q: %w", errConfig, envPrefix, pe.KeyName, pe.Value, pe.Err)
		}
		return c, fmt.Errorf("%w: %w", errConfig, err)
	}
	if err := c.resolveFiles(); err != nil {
		return c, err
	}
	if err := c.validate(); err != nil {
		return c, err
	}
	return c, nil
}

// knownKeys lists the environment variables config reads.
func knownKeys() ([]string, error) {
	var buf bytes.Buffer
	if err := envconfig.Usagef(envPrefix, &config{}, &buf, "{{range .}}{{usage_key .}}\n{{end}}"); err != nil {
		return nil, err
	}
	return strings.Fields(buf.String()), nil
}

// checkUnknown returns an error naming every SPARK2MQTT_ variable that
// config does not read (a typo would otherwise be silently ignored).
func checkUnknown() error {
	known, err := knownKeys()
	if err != nil {
		return err
	}
	var unknown []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, envPrefix+"_") && !slices.Contains(known, k) && !testOnlyVar(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("%w: unknown environment variable(s) %s (see spark2mqtt serve --help)", errConfig, strings.Join(unknown, ", "))
	}
	return nil
}

// testOnlyVar reports variables that steer the test suites, not the service.
func testOnlyVar(k string) bool {
	return strings.HasPrefix(k, envPrefix+"_REQUIRE_") || k == envPrefix+"_VECTORS"
}

// resolveFiles reads secrets given as *_FILE variables.
func (c *config) resolveFiles() error {
	if c.MQTTPasswordFile != "" {
		if c.MQTTPassword != "" {
			return fmt.Errorf("%w: set %s_MQTT_PASSWORD or %s_MQTT_PASSWORD_FILE, not both", errConfig, envPrefix, envPrefix)
		}
		b, err := os.ReadFile(c.MQTTPasswordFile)
		if err != nil {
			return fmt.Errorf("%w: %s_MQTT_PASSWORD_FILE: %w", errConfig, envPrefix, err)
		}
		c.MQTTPassword = strings.TrimRight(string(b), "\r\n")
	}
	return nil
}

// validate checks the values that envconfig's types do not.
func (c *config) validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s_%s: %s", errConfig, envPrefix, key, fmt.Sprintf(format, args...))
	}
	if err := checkListen(c.DeviceListen); err != nil {
		return bad("DEVICE_LISTEN", "%v", err)
	}
	if c.MQTTURL == "" {
		if err := checkListen(c.MQTTListen); err != nil {
			return bad("MQTT_LISTEN", "%v", err)
		}
		if c.MQTTWSListen != "" {
			if err := checkListen(c.MQTTWSListen); err != nil {
				return bad("MQTT_WS_LISTEN", "%v", err)
			}
		}
		if (c.MQTTTLSCert == "") != (c.MQTTTLSKey == "") {
			return bad("MQTT_TLS_CERT", "MQTT_TLS_CERT and MQTT_TLS_KEY go together")
		}
	}
	if c.DataDir == "" {
		return bad("DATA_DIR", "must not be empty")
	}
	switch strings.ToLower(c.KeyMode) {
	case "strict", "tofu":
		c.KeyMode = strings.ToLower(c.KeyMode)
	default:
		return bad("KEY_MODE", "%q is not strict or tofu", c.KeyMode)
	}
	if c.BaseTopic == "" || strings.ContainsAny(c.BaseTopic, "+#\x00") || strings.HasPrefix(c.BaseTopic, "/") || strings.HasSuffix(c.BaseTopic, "/") {
		return bad("BASE_TOPIC", "%q is not a valid topic prefix (no + # NUL, no leading or trailing /)", c.BaseTopic)
	}
	if c.HAPrefix == "" || strings.ContainsAny(c.HAPrefix, "+#\x00") {
		return bad("HA_PREFIX", "%q is not a valid topic prefix", c.HAPrefix)
	}
	for _, d := range []struct {
		key      string
		v        time.Duration
		min, max time.Duration
	}{
		{"HANDSHAKE_TIMEOUT", c.HandshakeTimeout, time.Second, 5 * time.Minute},
		{"IDLE_TIMEOUT", c.IdleTimeout, 5 * time.Second, time.Hour},
		{"POLL_INTERVAL", c.PollInterval, time.Second, 24 * time.Hour},
		{"CALL_TIMEOUT", c.CallTimeout, 100 * time.Millisecond, 10 * time.Minute},
		{"QUEUE_TTL", c.QueueTTL, time.Second, 30 * 24 * time.Hour},
		{"SHUTDOWN_TIMEOUT", c.ShutdownTimeout, 100 * time.Millisecond, 10 * time.Minute},
	} {
		if d.v < d.min || d.v > d.max {
			return bad(d.key, "%v is outside %v..%v", d.v, d.min, d.max)
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return bad("LOG_LEVEL", "%v", err)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return bad("LOG_FORMAT", "%q is not text or json", c.LogFormat)
	}
	return nil
}

// checkListen checks a host:port listen address (host may be empty).
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if port == "" {
		return fmt.Errorf("%q has no port", addr)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// newLogger builds the process logger from the configuration.
func newLogger(c config, w io.Writer) *slog.Logger {
	lvl, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// printUsage writes the configuration table (serve --help).
func printUsage(w io.Writer) error {
	return envconfig.Usagef(envPrefix, &config{}, w, usageFormat)
}

const usageFormat = `spark2mqtt serve: run the device server and the MQTT bridge.

Configuration comes from the environment; secrets can come from *_FILE files.

{{range .}}{{usage_key .}}
    {{usage_description .}}{{if usage_default .}} (default {{usage_default .}}){{end}}
{{end}}`
