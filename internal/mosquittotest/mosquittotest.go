package mosquittotest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireEnv is the environment variable that turns a missing Mosquitto from
// a skip into a failure (CI sets it to 1).
const RequireEnv = "SPARK2MQTT_REQUIRE_MOSQUITTO"

// InstallHint tells a developer how to get the broker the tests need.
const InstallHint = "apt-get install -y mosquitto mosquitto-clients"

// startTimeout bounds how long Start and Restart wait for the listener.
const startTimeout = 10 * time.Second

// Options configures one Mosquitto. The zero value is an anonymous broker
// without persistence on one plain TCP listener.
type Options struct {
	// Users, when not empty, turns anonymous access off and writes a
	// password_file (made with mosquitto_passwd) with these user names and
	// passwords.
	Users map[string]string

	// Persistence turns Mosquitto's persistence on, with the database in Dir.
	Persistence bool

	// AutosaveInterval is how often Mosquitto saves its database when
	// Persistence is on. Mosquitto only saves on that timer and on a clean
	// shutdown, so a SIGKILL loses what changed since the last save. Zero
	// keeps Mosquitto's default (30 minutes); it is rounded up to seconds.
	AutosaveInterval time.Duration

	// Dir holds the config file, the log, the password file and the
	// database. Empty means a fresh t.TempDir().
	Dir string

	// TLS, when set, adds a TLS listener on a second free port.
	TLS *TLSListener

	// MaxPacketSize sets max_packet_size: Mosquitto disconnects a client
	// that sends a larger packet. Zero keeps Mosquitto's default.
	MaxPacketSize int

	// Extra lines are appended to the config file after everything else
	// (they belong to the last listener when they are listener options).
	Extra []string
}

// TLSListener describes a TLS listener: the server's certificate chain and
// key, and the CA that client certificates must chain to.
type TLSListener struct {
	CAFile, CertFile, KeyFile string

	// RequireClientCert makes a client certificate signed by CAFile
	// mandatory (require_certificate true).
	RequireClientCert bool
}

// Broker is one Mosquitto process started by Start.
type Broker struct {
	// Immutable after Start.
	Addr    string // host:port of the plain TCP listener
	URL     string // tcp://Addr
	TLSAddr string // host:port of the TLS listener, when Options.TLS is set
	TLSURL  string // ssl://TLSAddr, when Options.TLS is set
	Dir     string // the broker's directory (config, log, database)
	Config  string // path of the config file
	LogFile string // path of Mosquitto's log

	t      testing.TB
	bin    string
	opts   Options
	passwd string // password file, or ""

	mu     sync.Mutex
	cmd    *exec.Cmd     // guarded by mu; nil when not running
	exited chan struct{} // guarded by mu; closed by the waiter when cmd exits
}

// Binary returns the path of the mosquitto binary, or skips the test (fails
// it when RequireEnv is 1) if there is none.
func Binary(t testing.TB) string {
	t.Helper()
	return find(t, "mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
}

func find(t testing.TB, name string, alternatives ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range alternatives {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found: install it with `%s`", name, InstallHint)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (%s=1 makes this a failure)", msg, RequireEnv)
	}
	t.Skip(msg)
	return ""
}

// Start starts a Mosquitto configured by opts on free 127.0.0.1 ports and
// returns once it accepts connections. The test's cleanup stops it; when the
// test failed, the cleanup also logs the end of Mosquitto's log.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	b := newBroker(t, opts)
	// A free port can be taken by someone else between our probe and
	// Mosquitto's bind: try a few times.
	var err error
	for range 5 {
		b.Addr = freeAddr(t)
		b.URL = "tcp://" + b.Addr
		if opts.TLS != nil {
			b.TLSAddr = freeAddr(t)
			b.TLSURL = "ssl://" + b.TLSAddr
		}
		if err = b.writeConfig(); err == nil {
			if err = b.start(); err == nil {
				return b
			}
		}
	}
	t.Fatalf("mosquittotest: start: %v\n%s", err, tail(b.Log(), 30))
	return nil
}

// StartAt starts a Mosquitto like Start but with its plain listener on addr
// (127.0.0.1:port), e.g. an address a client has been trying to reach. It
// fails the test if the port cannot be bound.
func StartAt(t testing.TB, addr string, opts Options) *Broker {
	t.Helper()
	b := newBroker(t, opts)
	b.Addr, b.URL = addr, "tcp://"+addr
	if opts.TLS != nil {
		b.TLSAddr = freeAddr(t)
		b.TLSURL = "ssl://" + b.TLSAddr
	}
	err := b.writeConfig()
	if err == nil {
		err = b.start()
	}
	if err != nil {
		t.Fatalf("mosquittotest: start at %s: %v\n%s", addr, err, tail(b.Log(), 30))
	}
	return b
}

func newBroker(t testing.TB, opts Options) *Broker {
	t.Helper()
	b := &Broker{t: t, bin: Binary(t), opts: opts, Dir: opts.Dir}
	if b.Dir == "" {
		b.Dir = t.TempDir()
	}
	b.Config = filepath.Join(b.Dir, "mosquitto.conf")
	b.LogFile = filepath.Join(b.Dir, "mosquitto.log")
	if len(opts.Users) > 0 {
		b.passwd = filepath.Join(b.Dir, "passwd")
		writePasswords(t, b.passwd, opts.Users)
	}
	t.Cleanup(func() {
		b.Stop()
		if t.Failed() {
			t.Logf("mosquitto log (%s):\n%s", b.LogFile, tail(b.Log(), 60))
		}
	})
	return b
}

func (b *Broker) writeConfig() error {
	if err := os.WriteFile(b.Config, []byte(b.config()), 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

func (b *Broker) config() string {
	var c strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&c, format+"\n", args...) }
	if u, err := user.Current(); err == nil && os.Geteuid() == 0 {
		// As root Mosquitto drops to the user "mosquitto", who cannot
		// read our temporary directory: stay who we are.
		line("user %s", u.Username)
	}
	line("log_dest file %s", b.LogFile)
	line("log_type error")
	line("log_type warning")
	line("log_type notice")
	line("log_type information")
	line("connection_messages true")
	line("per_listener_settings false")
	if b.passwd != "" {
		line("allow_anonymous false")
		line("password_file %s", b.passwd)
	} else {
		line("allow_anonymous true")
	}
	if b.opts.Persistence {
		line("persistence true")
		line("persistence_location %s/", b.Dir)
		if b.opts.AutosaveInterval > 0 {
			secs := int((b.opts.AutosaveInterval + time.Second - 1) / time.Second)
			line("autosave_interval %d", secs)
		}
	} else {
		line("persistence false")
	}
	if b.opts.MaxPacketSize > 0 {
		line("max_packet_size %d", b.opts.MaxPacketSize)
	}
	host, port, _ := net.SplitHostPort(b.Addr)
	line("listener %s %s", port, host)
	if tl := b.opts.TLS; tl != nil {
		host, port, _ := net.SplitHostPort(b.TLSAddr)
		line("listener %s %s", port, host)
		line("cafile %s", tl.CAFile)
		line("certfile %s", tl.CertFile)
		line("keyfile %s", tl.KeyFile)
		if tl.RequireClientCert {
			line("require_certificate true")
		}
	}
	for _, l := range b.opts.Extra {
		line("%s", l)
	}
	return c.String()
}

// start runs the process and waits until the plain listener accepts.
func (b *Broker) start() error {
	cmd := exec.Command(b.bin, "-c", b.Config)
	cmd.Dir = b.Dir
	// Mosquitto's own output (before the log file is open) goes to the log
	// too, so a config error is visible.
	out, err := os.OpenFile(b.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("run %s: %w", b.bin, err)
	}
	exited := make(chan struct{})
	b.mu.Lock()
	b.cmd, b.exited = cmd, exited
	b.mu.Unlock()
	// Owned by the Broker: ends when the process exits (Stop, Kill or a
	// crash); Stop and Kill wait for it.
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			b.mu.Lock()
			b.cmd = nil
			b.mu.Unlock()
			return errors.New("mosquitto exited during start")
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.stop(syscall.SIGKILL)
			return fmt.Errorf("mosquitto not listening on %s after %v", b.Addr, startTimeout)
		}
	}
}

// PID returns the process id of the running Mosquitto, or 0.
func (b *Broker) PID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil || b.cmd.Process == nil {
		return 0
	}
	return b.cmd.Process.Pid
}

// Stop ends Mosquitto with SIGTERM (it saves its database when persistence
// is on) and waits for it to exit. It does nothing when Mosquitto is not
// running.
func (b *Broker) Stop() { b.stop(syscall.SIGTERM) }

// Kill ends Mosquitto with SIGKILL, as a crash or a power cut would: nothing
// is saved and no client gets a DISCONNECT. It waits for the process to be
// gone.
func (b *Broker) Kill() { b.stop(syscall.SIGKILL) }

func (b *Broker) stop(sig syscall.Signal) {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	// Signal only the process we started, by its PID.
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(startTimeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Restart stops Mosquitto if it is running (cleanly) and starts it again with
// the same config, ports and directory, returning once it accepts
// connections. A test that wants a crash calls Kill first.
func (b *Broker) Restart() {
	b.t.Helper()
	b.Stop()
	var err error
	// The port was ours a moment ago; give the kernel a few tries.
	for range 20 {
		if err = b.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.t.Fatalf("mosquittotest: restart: %v\n%s", err, tail(b.Log(), 30))
}

// Log returns Mosquitto's log so far.
func (b *Broker) Log() string {
	data, err := os.ReadFile(b.LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(data)
}

func writePasswords(t testing.TB, path string, users map[string]string) {
	t.Helper()
	bin := find(t, "mosquitto_passwd", "/usr/bin/mosquitto_passwd")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatalf("mosquittotest: %v", err)
	}
	for name, pass := range users {
		out, err := exec.Command(bin, "-b", path, name, pass).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquittotest: mosquitto_passwd %s: %v: %s", name, err, out)
		}
	}
}

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment
// ago (for a test that needs an address where nothing listens yet).
func FreeAddr(t testing.TB) string {
	t.Helper()
	return freeAddr(t)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mosquittotest: free port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = append([]string{"... (" + strconv.Itoa(len(parts)-lines) + " lines before)"}, parts[len(parts)-lines:]...)
	}
	return strings.Join(parts, "\n")
}
