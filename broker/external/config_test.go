package external

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/internal/mosquittotest"
)

func TestParseURL(t *testing.T) {
	ok := []struct {
		name, in, want string
	}{
		{"tcp with port", "tcp://localhost:1883", "tcp://localhost:1883"},
		{"tcp default port", "tcp://broker.lan", "tcp://broker.lan:1883"},
		{"mqtt is tcp", "mqtt://10.0.0.2", "tcp://10.0.0.2:1883"},
		{"upper-case scheme", "TCP://h:1", "tcp://h:1"},
		{"trailing slash", "tcp://h:1883/", "tcp://h:1883"},
		{"ssl", "ssl://h", "ssl://h:8883"},
		{"tls is ssl", "tls://h:8884", "ssl://h:8884"},
		{"mqtts is ssl", "mqtts://h", "ssl://h:8883"},
		{"ws keeps path", "ws://h:9001/mqtt", "ws://h:9001/mqtt"},
		{"ws default port", "ws://h/mqtt", "ws://h:80/mqtt"},
		{"wss default port and query", "wss://h/mqtt?x=1", "wss://h:443/mqtt?x=1"},
		{"ipv6", "tcp://[::1]:1884", "tcp://[::1]:1884"},
		{"user info kept for New", "tcp://u:p@h", "tcp://u:p@h:1883"},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			u, err := ParseURL(c.in)
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", c.in, err)
			}
			if got := u.String(); got != c.want {
				t.Errorf("ParseURL(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}

	bad := []struct {
		name, in, mention string
	}{
		{"empty", "", "empty"},
		{"blank", "   ", "empty"},
		{"unknown scheme", "http://h:1883", `unknown scheme "http"`},
		{"host:port without scheme", "localhost:1883", "tcp://localhost:1883"},
		{"ip:port without scheme", "127.0.0.1:1883", ""},
		{"no scheme", "//h:1883", "no scheme"},
		{"missing host", "tcp://:1883", "no host"},
		{"missing host no port", "tcp://", "no host"},
		{"port not a number", "tcp://h:abc", "invalid port"},
		{"port zero", "tcp://h:0", "out of range"},
		{"port too big", "tcp://h:65536", "out of range"},
		{"empty port", "tcp://h:", "empty port"},
		{"tcp with path", "tcp://h:1883/mqtt", "no path"},
		{"tcp with query", "ssl://h:8883?x=1", "no path"},
		{"opaque", "tcp:h:1883", "missing //"},
		{"fragment", "ws://h/mqtt#x", "fragment"},
		{"control character", "tcp://h\x00:1883", ""},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			u, err := ParseURL(c.in)
			if !errors.Is(err, ErrBadURL) {
				t.Fatalf("ParseURL(%q) = %v, %v; want ErrBadURL", c.in, u, err)
			}
			if !strings.Contains(err.Error(), c.mention) {
				t.Errorf("error %q does not mention %q", err, c.mention)
			}
		})
	}

	// The password never appears in an error.
	_, err := ParseURL("tcp://user:hunter2@h:99999")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("got %v: want an error without the password", err)
	}
	_, err = ParseURL("tcp://user:hunter2@h:abc")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("got %v: want an error without the password", err)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"tcp://localhost:1883", "ssl://h", "ws://h:9001/mqtt", "wss://[::1]/x?y", "mqtt://u:p@h", "h:1", "", "tcp://h:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := ParseURL(raw)
		if err != nil {
			if !errors.Is(err, ErrBadURL) {
				t.Fatalf("error %v does not wrap ErrBadURL", err)
			}
			return
		}
		// Canonical scheme, a host and a port in range.
		if _, ok := map[string]bool{"tcp": true, "ssl": true, "ws": true, "wss": true}[u.Scheme]; !ok {
			t.Fatalf("scheme %q", u.Scheme)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" {
			t.Fatalf("host %q: %v", u.Host, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			t.Fatalf("port %q", port)
		}
		// Normalising is idempotent.
		again, err := ParseURL(u.String())
		if err != nil {
			t.Fatalf("ParseURL(%q) (from %q): %v", u.String(), raw, err)
		}
		if again.String() != u.String() {
			t.Fatalf("not idempotent: %q → %q → %q", raw, u, again)
		}
	})
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("this is not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pki := mosquittotest.NewPKI(t, dir)
	cases := []struct {
		name string
		cfg  Config
		want error
	}{
		{"bad URL", Config{URL: "http://h"}, ErrBadURL},
		{"no URL", Config{}, ErrBadURL},
		{"CA file missing", Config{URL: "ssl://h", CAFile: filepath.Join(dir, "nope.pem")}, ErrCAFile},
		{"CA file not PEM", Config{URL: "ssl://h", CAFile: notPEM}, ErrCAFile},
		{"CA file on tcp", Config{URL: "tcp://h", CAFile: pki.CAFile}, ErrConfig},
		{"insecure on ws", Config{URL: "ws://h/mqtt", InsecureSkipVerify: true}, ErrConfig},
		{"cert without key", Config{URL: "ssl://h", CertFile: pki.ClientCertFile}, ErrConfig},
		{"key without cert", Config{URL: "wss://h", KeyFile: pki.ClientKeyFile}, ErrConfig},
		{"cert file missing", Config{URL: "ssl://h", CertFile: filepath.Join(dir, "x"), KeyFile: pki.ClientKeyFile}, ErrClientCert},
		{"key does not match", Config{URL: "ssl://h", CertFile: pki.ClientCertFile, KeyFile: pki.KeyFile}, ErrClientCert},
		{"persistent session without client id", Config{URL: "tcp://h", PersistentSession: true}, ErrConfig},
		{"will with wildcard", Config{URL: "tcp://h", Will: &broker.Message{Topic: "spark/+/state"}}, broker.ErrInvalidTopic},
		{"will with empty topic", Config{URL: "tcp://h", Will: &broker.Message{}}, ErrConfig},
		{"will qos 3", Config{URL: "tcp://h", Will: &broker.Message{Topic: "a", QoS: 3}}, ErrBadQoS},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl, err := New(c.cfg)
			if !errors.Is(err, c.want) {
				t.Fatalf("New: got %v, %v; want %v", cl, err, c.want)
			}
		})
	}
	if _, err := New(Config{URL: "ssl://h", CAFile: filepath.Join(dir, "nope.pem")}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing CA file: %v does not wrap fs.ErrNotExist", err)
	}

	good := []Config{
		{URL: "ssl://h", CAFile: pki.CAFile, CertFile: pki.ClientCertFile, KeyFile: pki.ClientKeyFile},
		{URL: "wss://h/mqtt"},
		{URL: "tcp://h", PersistentSession: true, ClientID: "bridge-1"},
	}
	for _, cfg := range good {
		c, err := New(cfg)
		if err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
			continue
		}
		closeT(t, c)
	}
}

func TestInsecureSkipVerifyWarns(t *testing.T) {
	logger, lb := newLog(t)
	c, err := New(Config{URL: "ssl://h", InsecureSkipVerify: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	closeT(t, c)
	if ls := lb.lines("level=WARN", "verification is off"); len(ls) != 1 {
		t.Errorf("want one warning about verification, log:\n%s", lb.String())
	}
}

func TestDefaults(t *testing.T) {
	c, err := New(Config{URL: "tcp://h"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	cfg := c.cfg
	if cfg.KeepAlive != DefaultKeepAlive || cfg.ConnectTimeout != DefaultConnectTimeout ||
		cfg.ReconnectMin != DefaultReconnectMin || cfg.ReconnectMax != DefaultReconnectMax ||
		cfg.BufferSize != DefaultBufferSize || cfg.QueueSize != DefaultQueueSize ||
		cfg.MaxPacketSize != MaxPacketSizeLimit || cfg.Logger == nil {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if !strings.HasPrefix(c.st.clientID, "spark2mqtt-") || len(c.st.clientID) != len("spark2mqtt-")+8 {
		t.Errorf("client id %q", c.st.clientID)
	}
	if c.Ready() {
		t.Error("Ready before Start")
	}
}

func TestURLCredentials(t *testing.T) {
	c, err := New(Config{URL: "tcp://u%40x:p%3Aw@h:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	if c.st.user != "u@x" || c.st.pass != "p:w" || c.st.url.User != nil || c.st.url.String() != "tcp://h:1" {
		t.Errorf("got user %q pass %q url %q", c.st.user, c.st.pass, c.st.url)
	}
	c2, err := New(Config{URL: "tcp://u:p@h:1", Username: "cfg", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c2)
	if c2.st.user != "cfg" || c2.st.pass != "pw" {
		t.Errorf("Config credentials must win: got %q %q", c2.st.user, c2.st.pass)
	}
}
