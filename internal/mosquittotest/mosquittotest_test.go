package mosquittotest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// connectPacket builds an MQTT 3.1.1 CONNECT (clean session, keepalive 10 s).
func connectPacket(clientID, user, pass string) []byte {
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		return append(b, s...)
	}
	var body []byte
	body = str(body, "MQTT")
	flags := byte(0x02)
	if user != "" {
		flags |= 0x80 | 0x40
	}
	body = append(body, 4, flags, 0, 10)
	body = str(body, clientID)
	if user != "" {
		body = str(body, user)
		body = str(body, pass)
	}
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	return append(pkt, body...)
}

// mqttConnect sends CONNECT over c and returns the CONNACK return code.
func mqttConnect(t *testing.T, c net.Conn, user, pass string) byte {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(connectPacket("mosquittotest", user, pass)); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		t.Fatalf("got % x, want a CONNACK", ack)
	}
	return ack[3]
}

func dialConnect(t *testing.T, addr, user, pass string) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	return mqttConnect(t, c, user, pass)
}

func TestStartStopRestartKill(t *testing.T) {
	b := Start(t, Options{Persistence: true, AutosaveInterval: time.Second})
	if !strings.HasPrefix(b.URL, "tcp://127.0.0.1:") {
		t.Errorf("URL = %q", b.URL)
	}
	if rc := dialConnect(t, b.Addr, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d, want 0", rc)
	}
	pid := b.PID()
	b.Kill()
	if b.PID() != 0 {
		t.Error("PID after Kill is not 0")
	}
	if err := processAlive(pid); err == nil {
		t.Errorf("process %d still alive after Kill", pid)
	}
	if c, err := net.DialTimeout("tcp", b.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("still listening after Kill")
	}
	b.Restart()
	if b.PID() == pid || b.PID() == 0 {
		t.Errorf("PID after Restart = %d (was %d)", b.PID(), pid)
	}
	if rc := dialConnect(t, b.Addr, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d after restart, want 0", rc)
	}
	b.Stop()
	b.Stop() // idempotent
	if _, err := os.Stat(b.Dir + "/mosquitto.db"); err != nil {
		t.Errorf("no database after a clean stop with persistence: %v", err)
	}
	if !strings.Contains(b.Log(), "mosquitto version") {
		t.Errorf("log has no start line:\n%s", b.Log())
	}
}

// processAlive sends signal 0, which only checks that pid exists.
func processAlive(pid int) error {
	return syscall.Kill(pid, 0)
}

func TestUsers(t *testing.T) {
	b := Start(t, Options{Users: map[string]string{"bridge": "s3cret", "ha": "other"}})
	for _, c := range []struct {
		name, user, pass string
		ok               bool
	}{
		{"right", "bridge", "s3cret", true},
		{"second user", "ha", "other", true},
		{"wrong password", "bridge", "nope", false},
		{"anonymous", "", "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rc := dialConnect(t, b.Addr, c.user, c.pass)
			if (rc == 0) != c.ok {
				t.Errorf("CONNACK %d, want success %v", rc, c.ok)
			}
		})
	}
}

func TestStartAt(t *testing.T) {
	addr := FreeAddr(t)
	b := StartAt(t, addr, Options{})
	if b.Addr != addr {
		t.Errorf("Addr = %q, want %q", b.Addr, addr)
	}
	if rc := dialConnect(t, addr, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
}

func TestTLS(t *testing.T) {
	pki := NewPKI(t, "")
	b := Start(t, Options{TLS: pki.Listener(false)})
	if !strings.HasPrefix(b.TLSURL, "ssl://127.0.0.1:") {
		t.Errorf("TLSURL = %q", b.TLSURL)
	}
	pem, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file is not PEM")
	}
	c, err := tls.Dial("tcp", b.TLSAddr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS dial with the right CA: %v", err)
	}
	defer c.Close()
	if rc := mqttConnect(t, c, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}

	other := NewPKI(t, "")
	pem, err = os.ReadFile(other.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	wrong := x509.NewCertPool()
	wrong.AppendCertsFromPEM(pem)
	_, err = tls.Dial("tcp", b.TLSAddr, &tls.Config{RootCAs: wrong, MinVersion: tls.VersionTLS12})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("TLS dial with another CA: got %v, want x509.UnknownAuthorityError", err)
	}
}

func TestProxyCutAndRefuse(t *testing.T) {
	b := Start(t, Options{})
	p := NewProxy(t, b.Addr)
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if rc := mqttConnect(t, c, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Cut succeeded")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection still open after Cut")
	}

	p.Refuse(true)
	c2, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read on a refused connection: got %v, want EOF", err)
	}
	c2.Close()
	p.Refuse(false)
	if rc := dialConnect(t, p.Addr, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d after Refuse(false)", rc)
	}
	if n := p.Accepts(); n != 3 {
		t.Errorf("Accepts = %d, want 3", n)
	}
}

// wsDial opens a WebSocket to u (ws://host/path) with a raw handshake.
func wsDial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /mqtt HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n", addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// RFC 6455 §1.3's example key and its accept value.
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake: %s %v", resp.Status, resp.Header)
	}
	return c, br
}

func TestWSProxy(t *testing.T) {
	b := Start(t, Options{})
	p := NewWSProxy(t, b.Addr, nil)
	if !strings.HasPrefix(p.URL, "ws://127.0.0.1:") {
		t.Errorf("URL = %q", p.URL)
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(p.URL, "ws://"), "/mqtt")
	c, br := wsDial(t, addr)
	defer c.Close()
	// One masked binary frame carrying CONNECT.
	payload := connectPacket("ws", "", "")
	mask := [4]byte{1, 2, 3, 4}
	frame := []byte{0x82, 0x80 | byte(len(payload)), mask[0], mask[1], mask[2], mask[3]}
	for i, x := range payload {
		frame = append(frame, x^mask[i%4])
	}
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, got, err := readFrame(br)
	if err != nil {
		t.Fatal(err)
	}
	if op != 2 || len(got) != 4 || got[0] != 0x20 || got[3] != 0 {
		t.Errorf("got op %d payload % x, want a binary CONNACK 0", op, got)
	}
}

func TestTail(t *testing.T) {
	if got := tail("a\nb\nc\n", 2); got != "... (1 lines before)\nb\nc" {
		t.Errorf("tail = %q", got)
	}
}

// recTB records how find ends a test instead of ending it.
type recTB struct {
	testing.TB
	skipped, failed string
}

func (r *recTB) Helper() {}
func (r *recTB) Skip(args ...any) {
	r.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestMissingBinary(t *testing.T) {
	for _, c := range []struct {
		name, env  string
		skip, fail bool
	}{
		{"local: skip", "", true, false},
		{"CI: fail", "1", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(RequireEnv, c.env)
			r := &recTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				find(r, "spark2mqtt-no-such-binary", "/nonexistent/spark2mqtt-no-such-binary")
			}()
			<-done
			if (r.skipped != "") != c.skip || (r.failed != "") != c.fail {
				t.Fatalf("skipped %q, failed %q", r.skipped, r.failed)
			}
			if msg := r.skipped + r.failed; !strings.Contains(msg, InstallHint) {
				t.Errorf("message %q does not say how to install", msg)
			}
		})
	}
}

func TestProxyBlackhole(t *testing.T) {
	b := Start(t, Options{})
	p := NewProxy(t, b.Addr)
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.Blackhole(true)
	if _, err := c.Write(connectPacket("bh", "", "")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read through a blackhole: got %v, want a timeout", err)
	}
	p.Blackhole(false)
	if rc := dialConnect(t, p.Addr, "", ""); rc != 0 {
		t.Fatalf("CONNACK %d after the blackhole", rc)
	}
}
