package embedded

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key,
// and returns their paths and a pool that trusts it.
func writeTestCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "spark2mqtt test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// roundTrip subscribes a paho client, has the bridge publish, and checks
// that it arrives.
func roundTrip(t *testing.T, b *Broker, c paho.Client) {
	t.Helper()
	col := pahoCollector(t, c, "spark/+/var/+", 1)
	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/heater/var/temp", Payload: []byte("48.5"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if got := col.wait(t, 1)[0]; got.Topic != "spark/heater/var/temp" || string(got.Payload) != "48.5" {
		t.Errorf("got %s %q", got.Topic, got.Payload)
	}
	inbound := &collector{}
	if _, err := bridge.Subscribe(ctxT(t), "spark/+/fn/+", 1, inbound.handle); err != nil {
		t.Fatal(err)
	}
	if err := wait(ctxT(t), c.Publish("spark/heater/fn/heater", 1, false, "on")); err != nil {
		t.Fatal(err)
	}
	if got := inbound.wait(t, 1)[0]; string(got.Payload) != "on" {
		t.Errorf("bridge got %q", got.Payload)
	}
}

func TestTLSListener(t *testing.T) {
	certFile, keyFile, pool := writeTestCert(t)
	cfg := testConfig()
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSAddr = certFile, keyFile, "127.0.0.1:0"
	b := startBroker(t, cfg)
	if b.TLSAddr() == nil || b.WebSocketAddr() != nil {
		t.Fatalf("TLSAddr %v, WebSocketAddr %v", b.TLSAddr(), b.WebSocketAddr())
	}
	c := connectPaho(t, pahoOptions("ssl://"+b.TLSAddr().String(), "tls-client").
		SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	roundTrip(t, b, c)

	// A client that does not trust the certificate does not get in.
	bad := paho.NewClient(pahoOptions("ssl://"+b.TLSAddr().String(), "untrusting").
		SetTLSConfig(&tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}))
	tok := bad.Connect()
	if !tok.WaitTimeout(testTimeout) || tok.Error() == nil {
		t.Error("connected without trusting the certificate")
	}
	// Plain MQTT on the TLS port does not get a CONNACK.
	raw, err := net.Dial("tcp", b.TLSAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = raw.Write([]byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0})
	_ = raw.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 64)
	if n, _ := raw.Read(buf); n == 4 && buf[0] == 0x20 {
		t.Error("plain CONNECT answered on the TLS listener")
	}
}

func TestWebSocketListener(t *testing.T) {
	cfg := testConfig()
	cfg.WebSocketAddr = "127.0.0.1:0"
	b := startBroker(t, cfg)
	c := connectPaho(t, pahoOptions("ws://"+b.WebSocketAddr().String()+"/mqtt", "ws-client"))
	roundTrip(t, b, c)

	// Without a users file, a browser page from another origin may not
	// connect (it would reach the devices through the loopback exception).
	h := http.Header{"Origin": {"http://evil.example"}, "Sec-WebSocket-Protocol": {"mqtt"}}
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+b.WebSocketAddr().String()+"/mqtt", h)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin upgrade: err %v, response %v; want 403", err, resp)
	}
	if resp != nil {
		_ = resp.Body.Close()
	}
	h.Set("Origin", "http://"+b.WebSocketAddr().String())
	ws, resp, err := websocket.DefaultDialer.Dial("ws://"+b.WebSocketAddr().String()+"/mqtt", h)
	if err != nil {
		t.Fatalf("same-origin upgrade: %v", err)
	}
	_ = resp.Body.Close()
	// A text message is not MQTT: the connection is closed.
	_ = ws.WriteMessage(websocket.TextMessage, []byte("hello"))
	_ = ws.SetReadDeadline(time.Now().Add(testTimeout))
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Error("connection still open after a text message")
	}
	_ = ws.Close()
}

// TestConnectTimeout: a connection that never sends CONNECT is closed.
func TestConnectTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.ConnectTimeout = 100 * time.Millisecond
	b := startBroker(t, cfg)
	conn, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(testTimeout))
	start := time.Now()
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want the broker to close the connection", err)
	}
	if took := time.Since(start); took > testTimeout/2 {
		t.Errorf("closed after %v", took)
	}
	// A well-behaved client is not affected by the short connect deadline
	// once connected (keepalive takes over).
	c := connectPaho(t, pahoOptions(tcpURL(b), "slow-but-fine"))
	time.Sleep(3 * cfg.ConnectTimeout)
	if !c.IsConnectionOpen() {
		t.Error("connection closed after CONNECT")
	}
}

// TestStartStop starts and stops a broker with every listener, persistence
// and a connected client 100 times in a row; goleak (TestMain) checks that
// nothing is left running.
func TestStartStop(t *testing.T) {
	certFile, keyFile, _ := writeTestCert(t)
	dir := t.TempDir()
	for i := range 100 {
		cfg := testConfig()
		cfg.WebSocketAddr = "127.0.0.1:0"
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSAddr = certFile, keyFile, "127.0.0.1:0"
		cfg.DataDir = dir
		cfg.Will = &broker.Message{Topic: "spark/bridge/state", Payload: []byte("offline"), QoS: 1, Retain: true}
		b, err := New(cfg)
		if err != nil {
			t.Fatalf("run %d: New: %v", i, err)
		}
		if err := b.Start(); err != nil {
			t.Fatalf("run %d: Start: %v", i, err)
		}
		bridge := b.NewClient()
		col := &collector{}
		if _, err := bridge.Subscribe(ctxT(t), "spark/bridge/state", 1, col.handle); err != nil {
			t.Fatal(err)
		}
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/bridge/state", Payload: []byte("online"), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(pahoOptions(tcpURL(b), fmt.Sprintf("run-%d", i)))
		if tok := c.Connect(); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
			t.Fatalf("run %d: connect: %v", i, tok.Error())
		}
		// Leave the client connected: Close must disconnect it.
		closeBroker(t, b)
		c.Disconnect(0)
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: "x", Payload: []byte("x")}); !errors.Is(err, broker.ErrClosed) {
			t.Fatalf("publish after the broker closed: %v", err)
		}
		if err := bridge.Close(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		// The will went out at Start (before "online") and at Close.
		got := col.all()
		if len(got) < 3 || string(got[0].Payload) != "offline" || string(got[len(got)-1].Payload) != "offline" {
			t.Fatalf("run %d: bridge state sequence %v", i, got)
		}
		if err := b.Start(); !errors.Is(err, ErrStarted) {
			t.Fatalf("Start after Close: %v", err)
		}
		if err := b.Close(ctxT(t)); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	certFile, keyFile, _ := writeTestCert(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want error
	}{
		{"cert without key", func(c *Config) { c.TLSCertFile = certFile }, ErrConfig},
		{"missing cert file", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile = filepath.Join(t.TempDir(), "none.pem"), keyFile
		}, os.ErrNotExist},
		{"key is not a key", func(c *Config) { c.TLSCertFile, c.TLSKeyFile = certFile, certFile }, nil},
		{"address in use", func(c *Config) { c.Addr = busy.Addr().String() }, nil},
		{"websocket address in use", func(c *Config) { c.WebSocketAddr = busy.Addr().String() }, nil},
		{"bad address", func(c *Config) { c.Addr = "127.0.0.1:http-alt-x" }, nil},
		{"tiny packet size", func(c *Config) { c.MaxPacketSize = 10 }, ErrConfig},
		{"protected filter", func(c *Config) { c.ProtectedTopics = []string{"a/#/b"} }, ErrConfig},
		{"will with wildcard", func(c *Config) { c.Will = &broker.Message{Topic: "spark/+/state"} }, ErrConfig},
		{"data dir is a file", func(c *Config) { c.DataDir = certFile }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.cfg(&cfg)
			b, err := New(cfg)
			if err == nil {
				closeBroker(t, b)
				t.Fatal("New succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestDisconnectListener: shutting one listener down disconnects its
// clients (with DISCONNECT, so paho reports the connection lost) and leaves
// the clients of the other listeners connected.
func TestDisconnectListener(t *testing.T) {
	cfg := testConfig()
	cfg.WebSocketAddr = "127.0.0.1:0"
	b := startBroker(t, cfg)
	lost := make(chan error, 1)
	o := pahoOptions(tcpURL(b), "tcp-client").SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	tcp := connectPaho(t, o)
	ws := connectPaho(t, pahoOptions("ws://"+b.WebSocketAddr().String()+"/mqtt", "ws-client"))

	b.disconnectListener(listenerTCP)
	select {
	case <-lost:
	case <-time.After(testTimeout):
		t.Fatal("the TCP client was not disconnected")
	}
	if tcp.IsConnectionOpen() {
		t.Error("the TCP client's connection is still open")
	}
	roundTrip(t, b, ws) // the WebSocket client still works
}

// TestCloseUnderChurn closes the broker while clients keep connecting and
// leaving; Close must return (the listeners' client lookup must not
// deadlock against connects and disconnects) and leave nothing running.
func TestCloseUnderChurn(t *testing.T) {
	for round := range 20 {
		b, err := New(testConfig())
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		addr := b.Addr().String()
		stop := make(chan struct{})
		var connected atomic.Int64
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					c, err := connectIdle(addr, fmt.Sprintf("churn-%d-%d-%d", round, w, i))
					if err != nil {
						continue // the broker is closing
					}
					connected.Add(1)
					_ = c.Close()
				}
			}()
		}
		waitFor(t, "clients connecting", func() bool { return connected.Load() >= 20 })
		closed := make(chan error, 1)
		go func() { closed <- b.Close(ctxT(t)) }()
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("round %d: Close: %v", round, err)
			}
		case <-time.After(testTimeout):
			t.Fatalf("round %d: Close did not return under client churn", round)
		}
		close(stop)
		wg.Wait()
	}
}
