package external

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/internal/mosquittotest"
)

// waitUntil polls cond (for states that have no event of their own, like
// a connection being noticed as gone) until it holds or the test times out.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// roundTrip checks that c can publish to and receive from the broker.
func roundTrip(t *testing.T, c *Client, topic string) {
	t.Helper()
	col := newCollector()
	unsub, err := c.Subscribe(ctxT(t), topic, 1, col.handle)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer func() { _ = unsub(ctxT(t)) }()
	if err := c.Publish(ctxT(t), broker.Message{Topic: topic, Payload: []byte("ping"), QoS: 1}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if m := col.wait(t, 1)[0]; m.Topic != topic || string(m.Payload) != "ping" {
		t.Fatalf("got %s %q", m.Topic, m.Payload)
	}
}

func shortCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestUnreachableThenReady(t *testing.T) {
	addr := mosquittotest.FreeAddr(t)
	cfg, lb := testConfig(t, "tcp://"+addr)
	c := startT(t, cfg)
	if err := c.Start(); err != nil {
		t.Fatalf("second Start: %v", err)
	}

	// One line per attempt: address, cause, class, attempt and next try.
	lb.waitLog(t, "broker unreachable", "attempt=3")
	lines := lb.lines("broker unreachable")
	for i, l := range lines[:3] {
		for _, want := range []string{"level=WARN", "addr=" + addr, "reason=unreachable", "connection refused", fmt.Sprintf("attempt=%d", i+1), "next_try="} {
			if !strings.Contains(l, want) {
				t.Errorf("line %d %q lacks %q", i, l, want)
			}
		}
	}
	if c.Ready() {
		t.Fatal("Ready with no broker")
	}
	err := c.WaitReady(shortCtx(t, 50*time.Millisecond))
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReady: got %v, want ErrUnreachable and DeadlineExceeded", err)
	}

	// Usable while away: subscriptions register, QoS 1 buffers, QoS 0 fails.
	col := newCollector()
	if _, err := c.Subscribe(ctxT(t), "away/#", 1, col.handle); err != nil {
		t.Fatalf("Subscribe while unreachable: %v", err)
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: "away/1", Payload: []byte("buffered"), QoS: 1}); err != nil {
		t.Fatalf("Publish QoS 1 while unreachable: %v", err)
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: "away/0", QoS: 0}); !errors.Is(err, broker.ErrNotConnected) {
		t.Errorf("Publish QoS 0 while unreachable: got %v, want ErrNotConnected", err)
	}
	if s := c.Stats(); s.Buffered != 1 || s.Ready || s.ConnectFailures < 3 {
		t.Errorf("Stats = %+v", s)
	}

	// The broker appears on that address: the client connects by itself,
	// subscribes, then sends what it buffered (which it receives itself).
	mosquittotest.StartAt(t, addr, mosquittotest.Options{})
	if err := c.WaitReady(ctxT(t)); err != nil {
		t.Fatalf("WaitReady after the broker started: %v", err)
	}
	if m := col.wait(t, 1)[0]; m.Topic != "away/1" || string(m.Payload) != "buffered" {
		t.Errorf("got %s %q", m.Topic, m.Payload)
	}
	lb.waitLog(t, "level=INFO", "broker connected", "addr="+addr)
	if s := c.Stats(); s.Buffered != 0 || s.Resent != 1 || s.Connects != 1 || !s.Ready {
		t.Errorf("Stats = %+v", s)
	}
}

func TestWrongCredentials(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{Users: map[string]string{"bridge": "right-pass"}})
	for _, c := range []struct {
		name, user, pass string
	}{
		{"wrong password", "bridge", "Wrong-Pass-42"},
		{"unknown user", "nobody", "Wrong-Pass-42"},
		{"anonymous", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, lb := testConfig(t, mq.URL)
			cfg.Username, cfg.Password = c.user, c.pass
			cl, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer closeT(t, cl)
			if err := cl.Start(); err != nil {
				t.Fatal(err)
			}
			// Mosquitto 2 answers CONNACK 5 (not authorized) to 3.1.1
			// clients with wrong credentials.
			line := lb.waitLog(t, "broker refused the credentials")
			for _, want := range []string{"level=ERROR", "reason=not_authorized", "not authorized", "CONNACK 5", "next_try="} {
				if !strings.Contains(line, want) {
					t.Errorf("log line %q lacks %q", line, want)
				}
			}
			if strings.Contains(lb.String(), "Wrong-Pass-42") {
				t.Error("the password is in the log")
			}
			if err := cl.WaitReady(shortCtx(t, 100*time.Millisecond)); !errors.Is(err, ErrNotAuthorized) {
				t.Errorf("WaitReady: got %v, want ErrNotAuthorized", err)
			}
		})
	}
	t.Run("right password", func(t *testing.T) {
		cfg, _ := testConfig(t, mq.URL)
		cfg.Username, cfg.Password = "bridge", "right-pass"
		roundTrip(t, dial(t, cfg), "creds/ok")
	})
	t.Run("password in URL", func(t *testing.T) {
		cfg, _ := testConfig(t, "tcp://bridge:right-pass@"+mq.Addr)
		roundTrip(t, dial(t, cfg), "creds/url")
	})
}

// TestConnackCodes covers refusals Mosquitto does not produce, with a
// scripted broker: each is named in the log and in WaitReady's error.
func TestConnackCodes(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(net.Conn, *bufio.Reader)
		want   error
		reason string
		msg    string
	}{
		{"bad user name or password", connackAnswer(4), ErrBadCredentials, "reason=bad_credentials", "broker refused the credentials"},
		{"not authorized", connackAnswer(5), ErrNotAuthorized, "reason=not_authorized", "broker refused the credentials"},
		{"client id rejected", connackAnswer(2), ErrRefused, "reason=refused", "broker connect failed"},
		{"server unavailable", connackAnswer(3), ErrRefused, "reason=refused", "broker connect failed"},
		{"bad protocol version", connackAnswer(1), ErrRefused, "reason=refused", "broker connect failed"},
		{"hang up before CONNACK", func(net.Conn, *bufio.Reader) {}, ErrHandshake, "reason=handshake", "broker connect failed"},
		{"garbage instead of CONNACK", func(c net.Conn, r *bufio.Reader) {
			_, _, _ = readPacket(r)
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}, ErrHandshake, "reason=handshake", "broker connect failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeBroker(t, c.answer)
			cfg, lb := testConfig(t, "tcp://"+f.addr)
			cl, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer closeT(t, cl)
			if err := cl.Start(); err != nil {
				t.Fatal(err)
			}
			lb.waitLog(t, c.msg, c.reason, "attempt=2")
			if err := cl.WaitReady(shortCtx(t, 50*time.Millisecond)); !errors.Is(err, c.want) {
				t.Errorf("WaitReady: got %v, want %v", err, c.want)
			}
		})
	}
}

// TestConnectTimeout: a broker that accepts TCP and never answers.
func TestConnectTimeout(t *testing.T) {
	silent := newFakeBroker(t, func(_ net.Conn, r *bufio.Reader) { _, _ = io.Copy(io.Discard, r) })
	cfg, lb := testConfig(t, "tcp://"+silent.addr)
	cfg.ConnectTimeout = 200 * time.Millisecond
	cl, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	lb.waitLog(t, "broker connect failed", "reason=handshake")
	closeT(t, cl)

	// Close during an attempt does not wait for the timeout.
	cfg.ConnectTimeout = time.Minute
	cl, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cl.Close(shortCtx(t, 5*time.Second)); err != nil {
		t.Fatalf("Close during a connect attempt: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Close took %v", took)
	}
}

func TestSubscribeRefused(t *testing.T) {
	f := newFakeBroker(t, refuseSubscriptions)
	cfg, lb := testConfig(t, "tcp://"+f.addr)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	// Registered before the connection: restored at connect, refused,
	// logged, and the client is still ready.
	if _, err := c.Subscribe(ctxT(t), "early/#", 1, func(broker.Message) {}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	lb.waitLog(t, "level=ERROR", "broker refused a subscription", "filter=early/#")
	_, err = c.Subscribe(ctxT(t), "secret/#", 1, func(broker.Message) {})
	if !errors.Is(err, ErrSubscribeRefused) {
		t.Errorf("Subscribe: got %v, want ErrSubscribeRefused", err)
	}
}

func TestTLS(t *testing.T) {
	pki := mosquittotest.NewPKI(t, "")
	other := mosquittotest.NewPKI(t, "")
	mq := mosquittotest.Start(t, mosquittotest.Options{TLS: pki.Listener(false)})
	_, port, _ := net.SplitHostPort(mq.TLSAddr)

	t.Run("right CA", func(t *testing.T) {
		cfg, _ := testConfig(t, mq.TLSURL)
		cfg.CAFile = pki.CAFile
		roundTrip(t, dial(t, cfg), "tls/ok")
	})
	t.Run("by name", func(t *testing.T) {
		cfg, _ := testConfig(t, "mqtts://localhost:"+port)
		cfg.CAFile = pki.CAFile
		roundTrip(t, dial(t, cfg), "tls/name")
	})
	t.Run("wrong CA", func(t *testing.T) {
		cfg, lb := testConfig(t, mq.TLSURL)
		cfg.CAFile = other.CAFile
		c := startT(t, cfg)
		line := lb.waitLog(t, "broker tls handshake failed")
		for _, want := range []string{"level=ERROR", "reason=tls", "certificate signed by unknown authority"} {
			if !strings.Contains(line, want) {
				t.Errorf("log line %q lacks %q", line, want)
			}
		}
		if err := c.WaitReady(shortCtx(t, 50*time.Millisecond)); !errors.Is(err, ErrTLS) {
			t.Errorf("WaitReady: got %v, want ErrTLS", err)
		}
	})
	t.Run("insecure skip verify", func(t *testing.T) {
		cfg, lb := testConfig(t, mq.TLSURL)
		cfg.CAFile = other.CAFile
		cfg.InsecureSkipVerify = true
		roundTrip(t, dial(t, cfg), "tls/insecure")
		if len(lb.lines("level=WARN", "verification is off")) != 1 {
			t.Errorf("no warning; log:\n%s", lb)
		}
	})
	t.Run("tcp to the TLS port", func(t *testing.T) {
		cfg, lb := testConfig(t, "tcp://"+mq.TLSAddr)
		startT(t, cfg)
		lb.waitLog(t, "broker connect failed", "reason=handshake")
	})
	t.Run("ssl to the plain port", func(t *testing.T) {
		cfg, lb := testConfig(t, "ssl://"+mq.Addr)
		cfg.CAFile = pki.CAFile
		startT(t, cfg)
		lb.waitLog(t, "broker tls handshake failed", "reason=tls")
	})

	mtls := mosquittotest.Start(t, mosquittotest.Options{TLS: pki.Listener(true)})
	t.Run("client certificate", func(t *testing.T) {
		cfg, _ := testConfig(t, mtls.TLSURL)
		cfg.CAFile, cfg.CertFile, cfg.KeyFile = pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile
		roundTrip(t, dial(t, cfg), "tls/mtls")
	})
	t.Run("client certificate missing", func(t *testing.T) {
		cfg, lb := testConfig(t, mtls.TLSURL)
		cfg.CAFile = pki.CAFile
		c := startT(t, cfg)
		// TLS 1.3 reports the missing certificate after the handshake, on
		// the first read (waiting for CONNACK): still a TLS failure.
		lb.waitLog(t, "broker tls handshake failed", "reason=tls", "attempt=2")
		if c.Ready() {
			t.Error("ready without a client certificate")
		}
	})
}

func TestWebSocket(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	t.Run("ws", func(t *testing.T) {
		ws := mosquittotest.NewWSProxy(t, mq.Addr, nil)
		cfg, _ := testConfig(t, ws.URL)
		roundTrip(t, dial(t, cfg), "ws/ok")
	})
	pki := mosquittotest.NewPKI(t, "")
	cert, err := tls.LoadX509KeyPair(pki.CertFile, pki.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	wss := mosquittotest.NewWSProxy(t, mq.Addr, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	t.Run("wss", func(t *testing.T) {
		cfg, _ := testConfig(t, wss.URL)
		cfg.CAFile = pki.CAFile
		roundTrip(t, dial(t, cfg), "wss/ok")
	})
	t.Run("wss wrong CA", func(t *testing.T) {
		cfg, lb := testConfig(t, wss.URL)
		cfg.CAFile = mosquittotest.NewPKI(t, "").CAFile
		startT(t, cfg)
		lb.waitLog(t, "broker tls handshake failed", "reason=tls")
	})
}

// proxied connects a Client to mq through a proxy the test can cut. mod
// adjusts the Config; before sees the Client before Start.
func proxied(t *testing.T, mq *mosquittotest.Broker, mod func(*Config), before func(*Client)) (*Client, *mosquittotest.Proxy, *logBuf) {
	t.Helper()
	p := mosquittotest.NewProxy(t, mq.Addr)
	cfg, lb := testConfig(t, p.URL)
	if mod != nil {
		mod(&cfg)
	}
	return dialWith(t, cfg, before), p, lb
}

// goAway cuts the client off the broker and waits until it noticed.
func goAway(t *testing.T, c *Client, p *mosquittotest.Proxy) {
	t.Helper()
	p.Refuse(true)
	p.Cut()
	waitUntil(t, "the client notices the cut", func() bool { return !c.Ready() })
}

func TestOfflineBufferPolicy(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	c, p, _ := proxied(t, mq, func(cfg *Config) { cfg.BufferSize = 5 }, nil)
	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	col := newCollector()
	if _, err := obs.Subscribe(ctxT(t), "buf/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	goAway(t, c, p)

	pub := func(topic, payload string, retain bool) error {
		return c.Publish(ctxT(t), broker.Message{Topic: topic, Payload: []byte(payload), QoS: 1, Retain: retain})
	}
	for i := 1; i <= 3; i++ {
		if err := pub("buf/ev", fmt.Sprint(i), false); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
	for i := 1; i <= 6; i++ { // six values of one retained topic take one slot
		if err := pub("buf/state", fmt.Sprint(i), true); err != nil {
			t.Fatalf("state %d: %v", i, err)
		}
	}
	if err := pub("buf/ev", "4", false); err != nil {
		t.Fatalf("event 4: %v", err)
	}
	if err := pub("buf/ev", "5", false); !errors.Is(err, broker.ErrBufferFull) {
		t.Errorf("sixth slot: got %v, want ErrBufferFull", err)
	}
	if err := pub("buf/state", "7", true); err != nil {
		t.Errorf("a retained update of a buffered topic with the buffer full: %v", err)
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: "buf/q0", QoS: 0}); !errors.Is(err, broker.ErrNotConnected) {
		t.Errorf("QoS 0 while away: got %v, want ErrNotConnected", err)
	}
	if s := c.Stats(); s.Buffered != 5 || s.BufferFull != 1 || s.Coalesced != 6 {
		t.Errorf("Stats = %+v, want Buffered 5, BufferFull 1, Coalesced 6", s)
	}

	p.Refuse(false)
	got := col.wait(t, 5)
	var seq []string
	for _, m := range got {
		seq = append(seq, m.Topic+"="+string(m.Payload))
	}
	if want := "buf/ev=1 buf/ev=2 buf/ev=3 buf/ev=4 buf/state=7"; strings.Join(seq, " ") != want {
		t.Errorf("delivered %q, want %q", strings.Join(seq, " "), want)
	}
	if s := c.Stats(); s.Buffered != 0 || s.Resent != 5 {
		t.Errorf("Stats = %+v", s)
	}
	t.Cleanup(func() {
		_ = obs.Publish(context.Background(), broker.Message{Topic: "buf/state", QoS: 1, Retain: true})
	})
}

// TestBridgeStateLifecycle runs the bridge's availability pattern: a will
// "offline" (retained), "online" from OnConnect after every connect, and a
// clean Close that leaves no will behind.
func TestBridgeStateLifecycle(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	const state = "spark/bridge/state"
	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	col := newCollector()
	if _, err := obs.Subscribe(ctxT(t), "spark/bridge/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = obs.Publish(context.Background(), broker.Message{Topic: state, QoS: 1, Retain: true}) })

	var cp atomic.Pointer[Client]
	var connects atomic.Int32
	c, p, _ := proxied(t, mq, func(cfg *Config) {
		cfg.Will = &broker.Message{Topic: state, Payload: []byte("offline"), QoS: 1, Retain: true}
		cfg.OnConnect = func() {
			connects.Add(1)
			// Called on its own goroutine: waiting for the PUBACK is fine.
			if err := cp.Load().Publish(context.Background(), broker.Message{Topic: state, Payload: []byte("online"), QoS: 1, Retain: true}); err != nil {
				t.Errorf("OnConnect publish: %v", err)
			}
		}
	}, cp.Store)
	payloads := func(ms []broker.Message) string {
		var s []string
		for _, m := range ms {
			if m.Topic == state {
				s = append(s, string(m.Payload))
			}
		}
		return strings.Join(s, ",")
	}
	col.waitFor(t, "online", func(ms []broker.Message) bool { return payloads(ms) == "online" })

	goAway(t, c, p) // a crash, seen from the broker
	col.waitFor(t, "the will", func(ms []broker.Message) bool { return payloads(ms) == "online,offline" })
	p.Refuse(false)
	col.waitFor(t, "online again", func(ms []broker.Message) bool { return payloads(ms) == "online,offline,online" })
	if n := connects.Load(); n != 2 {
		t.Errorf("OnConnect called %d times, want 2", n)
	}

	closeT(t, c)
	if err := obs.Publish(ctxT(t), broker.Message{Topic: "spark/bridge/marker", Payload: []byte("m"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	ms := col.waitFor(t, "the marker", func(ms []broker.Message) bool { return len(ms) > 0 && ms[len(ms)-1].Topic == "spark/bridge/marker" })
	if got := payloads(ms); got != "online,offline,online" {
		t.Errorf("state after a clean Close: %s (the will must not fire)", got)
	}
}

func TestHandlerMayCallClient(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	cfg, _ := testConfig(t, mq.URL)
	c := dial(t, cfg)
	replies := newCollector()
	if _, err := c.Subscribe(ctxT(t), "call/reply", 1, replies.handle); err != nil {
		t.Fatal(err)
	}
	// A handler that publishes at QoS 1 (waiting for the PUBACK) and
	// subscribes: it runs on its own goroutine, so paho is not blocked.
	handled := make(chan struct{}, 20)
	if _, err := c.Subscribe(ctxT(t), "call/req", 1, func(m broker.Message) {
		defer func() { handled <- struct{}{} }()
		if err := c.Publish(context.Background(), broker.Message{Topic: "call/reply", Payload: m.Payload, QoS: 1}); err != nil {
			t.Errorf("publish from a handler: %v", err)
		}
		if _, err := c.Subscribe(context.Background(), "call/extra", 1, func(broker.Message) {}); err != nil {
			t.Errorf("subscribe from a handler: %v", err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := c.Publish(ctxT(t), broker.Message{Topic: "call/req", Payload: fmt.Append(nil, i), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	replies.wait(t, 20)
	for range 20 {
		<-handled
	}
}

func TestCloseFlushesBuffer(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	col := newCollector()
	if _, err := obs.Subscribe(ctxT(t), "flush/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	c, p, _ := proxied(t, mq, nil, nil)
	goAway(t, c, p)
	const n = 2000
	for i := range n {
		if err := c.Publish(ctxT(t), broker.Message{Topic: "flush/x", Payload: fmt.Append(nil, i), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	p.Refuse(false)
	if err := c.WaitReady(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	closeT(t, c) // right away: the buffer is still being sent
	got := col.wait(t, n)
	for i, m := range got {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d is %q: order or loss", i, m.Payload)
		}
	}
	if s := c.Stats(); s.Lost != 0 || s.Buffered != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestPublishInFlightWhenConnectionDrops: a QoS 1 Publish sent straight to
// the broker whose PUBACK never comes because the connection drops is
// buffered and sent again with the next connection, with a clean session
// and with a persistent one (where paho itself never completes the
// message's token).
func TestPublishInFlightWhenConnectionDrops(t *testing.T) {
	for _, persistent := range []bool{false, true} {
		t.Run(fmt.Sprintf("persistent=%v", persistent), func(t *testing.T) {
			var conns atomic.Int32
			got := make(chan publishPacket, 10)
			f := newFakeBroker(t, func(c net.Conn, r *bufio.Reader) {
				if conns.Add(1) > 1 {
					ackPublishes(got)(c, r)
					return
				}
				// The first connection takes the PUBLISH and hangs up
				// without a PUBACK.
				session(c, r, func(h byte, _ []byte) bool { return h>>4 != 3 })
			})
			cfg, _ := testConfig(t, "tcp://"+f.addr)
			cfg.ClientID, cfg.PersistentSession = "inflight", persistent
			c := dial(t, cfg)
			if err := c.Publish(ctxT(t), broker.Message{Topic: "in/flight", Payload: []byte("x"), QoS: 1}); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			if p := <-got; p.topic != "in/flight" || p.payload != "x" || p.qos != 1 {
				t.Errorf("the second connection got %+v", p)
			}
			if s := c.Stats(); s.Connects != 2 || s.Resent != 1 {
				t.Errorf("Stats = %+v, want Connects 2, Resent 1", s)
			}
		})
	}
}

func TestCloseBeforeStart(t *testing.T) {
	cfg, lb := testConfig(t, "tcp://127.0.0.1:1")
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{}, 1)
	unsub, err := c.Subscribe(ctxT(t), "a/#", 1, func(broker.Message) { ran <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: "a/b", QoS: 1}); err != nil {
		t.Fatal(err)
	}
	closeT(t, c)
	closeT(t, c)
	if s := c.Stats(); s.Lost != 1 {
		t.Errorf("Stats = %+v, want one lost message", s)
	}
	lb.waitLog(t, "closed with undelivered buffered messages", "lost=1")
	if err := c.Start(); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := c.WaitReady(ctxT(t)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("WaitReady after Close: %v", err)
	}
	if err := unsub(ctxT(t)); err != nil {
		t.Errorf("unsubscribe after Close: %v", err)
	}
	if err := c.Publish(ctxT(t), broker.Message{Topic: "a/b", QoS: 1}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: %v", err)
	}
	if _, err := c.Subscribe(ctxT(t), "a/#", 1, func(broker.Message) {}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: %v", err)
	}
}

func TestPublishSubscribeErrors(t *testing.T) {
	c, err := New(Config{URL: "tcp://127.0.0.1:1", MaxPacketSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	for _, tc := range []struct {
		name string
		m    broker.Message
		want error
	}{
		{"plus", broker.Message{Topic: "spark/+/x", QoS: 1}, broker.ErrInvalidTopic},
		{"hash", broker.Message{Topic: "spark/#", QoS: 1}, broker.ErrInvalidTopic},
		{"empty", broker.Message{QoS: 1}, broker.ErrInvalidTopic},
		{"qos 3", broker.Message{Topic: "a", QoS: 3}, ErrBadQoS},
		{"too large", broker.Message{Topic: "a", Payload: make([]byte, 100), QoS: 0}, broker.ErrTooLarge},
		{"just too large", broker.Message{Topic: "a", Payload: make([]byte, 100-2-1-2-2+1), QoS: 1}, broker.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.Publish(ctxT(t), tc.m); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	// Exactly at the limit it is accepted (buffered: no broker here).
	if err := c.Publish(ctxT(t), broker.Message{Topic: "a", Payload: make([]byte, 100-2-1-2-2), QoS: 1}); err != nil {
		t.Errorf("a packet of exactly MaxPacketSize: %v", err)
	}
	for _, tc := range []struct {
		name   string
		filter string
		qos    byte
		h      broker.Handler
		want   error
	}{
		{"bad filter", "a/#/b", 1, func(broker.Message) {}, broker.ErrInvalidTopic},
		{"qos 3", "a", 3, func(broker.Message) {}, ErrBadQoS},
		{"nil handler", "a", 1, nil, ErrNilHandler},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Subscribe(ctxT(t), tc.filter, tc.qos, tc.h); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestPersistentSession: with a fixed client id and a persistent session,
// QoS 1 messages published while the client was away are delivered when it
// comes back, to a subscription registered before Start.
func TestPersistentSession(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	cfg, _ := testConfig(t, mq.URL)
	cfg.ClientID, cfg.PersistentSession = "persistent-test", true
	first := dial(t, cfg)
	if _, err := first.Subscribe(ctxT(t), "ps/#", 1, func(broker.Message) {}); err != nil {
		t.Fatal(err)
	}
	closeT(t, first)

	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	if err := obs.Publish(ctxT(t), broker.Message{Topic: "ps/while-away", Payload: []byte("queued"), QoS: 1}); err != nil {
		t.Fatal(err)
	}

	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, second)
	col := newCollector()
	if _, err := second.Subscribe(ctxT(t), "ps/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	if m := col.wait(t, 1)[0]; m.Topic != "ps/while-away" || string(m.Payload) != "queued" {
		t.Errorf("got %s %q", m.Topic, m.Payload)
	}
}

// TestStartStop100 connects, uses and closes a client 100 times in a row;
// nothing may be left running.
func TestStartStop100(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg, _ := testConfig(t, mq.URL)
	for i := range 100 {
		c, err := Connect(ctxT(t), cfg)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		col := newCollector()
		if _, err := c.Subscribe(ctxT(t), "ss/x", 1, col.handle); err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(ctxT(t), broker.Message{Topic: "ss/x", Payload: []byte("x"), QoS: 1}); err != nil {
			t.Fatal(err)
		}
		col.wait(t, 1)
		if err := c.Close(ctxT(t)); err != nil {
			t.Fatalf("round %d: Close: %v", i, err)
		}
	}
}

func TestOnConnectCalledAfterResubscribe(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	col := newCollector()
	got := make(chan error, 4)
	c, p, _ := proxied(t, mq, func(cfg *Config) {
		cfg.OnConnect = func() {
			// The subscriptions are already restored when OnConnect runs:
			// a message published now reaches them.
			got <- obs.Publish(context.Background(), broker.Message{Topic: "oc/x", Payload: []byte("after connect"), QoS: 1})
		}
	}, nil)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctxT(t), "oc/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	goAway(t, c, p)
	p.Refuse(false)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	col.wait(t, 1)
}

// TestPersistentSessionStaleUnsubscribe: a filter unsubscribed while the
// broker was away is removed from the persistent session at the next
// connect, so the broker stops queueing for it.
func TestPersistentSessionStaleUnsubscribe(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	const id = "stale-test"
	c, p, _ := proxied(t, mq, func(cfg *Config) { cfg.ClientID, cfg.PersistentSession = id, true }, nil)
	unsub, err := c.Subscribe(ctxT(t), "stale/#", 1, func(broker.Message) {})
	if err != nil {
		t.Fatal(err)
	}
	goAway(t, c, p)
	if err := unsub(ctxT(t)); err != nil {
		t.Fatalf("unsubscribe while away: %v", err)
	}
	p.Refuse(false)
	if err := c.WaitReady(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	closeT(t, c) // the session stays on the broker

	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	if err := obs.Publish(ctxT(t), broker.Message{Topic: "stale/x", Payload: []byte("must not be queued"), QoS: 1}); err != nil {
		t.Fatal(err)
	}

	// Back with the same session and a catch-all handler: whatever the
	// session queued arrives first, before the marker.
	cfg, _ := testConfig(t, mq.URL)
	cfg.ClientID, cfg.PersistentSession = id, true
	col := newCollector()
	again := dialWith(t, cfg, func(c *Client) {
		if _, err := c.Subscribe(ctxT(t), "#", 1, col.handle); err != nil {
			t.Fatal(err)
		}
	})
	if err := again.Publish(ctxT(t), broker.Message{Topic: "marker", Payload: []byte("m"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	ms := col.waitFor(t, "the marker", func(ms []broker.Message) bool {
		return len(ms) > 0 && ms[len(ms)-1].Topic == "marker"
	})
	for _, m := range ms {
		if m.Topic == "stale/x" {
			t.Errorf("the broker still queued for the unsubscribed filter: %s %q", m.Topic, m.Payload)
		}
	}
}

// TestSilentDeath: the network path goes quiet (no FIN, no RST). The
// keep-alive notices; a QoS 1 message that was waiting for its PUBACK goes
// to the buffer (Publish returns nil) and is delivered after the reconnect.
func TestSilentDeath(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	ocfg, _ := testConfig(t, mq.URL)
	obs := dial(t, ocfg)
	col := newCollector()
	if _, err := obs.Subscribe(ctxT(t), "silent/#", 1, col.handle); err != nil {
		t.Fatal(err)
	}
	c, p, lb := proxied(t, mq, func(cfg *Config) { cfg.KeepAlive = time.Second }, nil)

	p.Blackhole(true)
	start := time.Now()
	if err := c.Publish(ctxT(t), broker.Message{Topic: "silent/x", Payload: []byte("in flight"), QoS: 1}); err != nil {
		t.Fatalf("Publish across a silent death: %v", err)
	}
	t.Logf("Publish returned after %v (keep-alive 1 s)", time.Since(start))
	lb.waitLog(t, "broker connection lost", "pingresp")
	if s := c.Stats(); s.Buffered != 1 || s.Ready {
		t.Errorf("Stats = %+v, want the message buffered and not ready", s)
	}

	p.Blackhole(false)
	p.Cut() // what was swallowed broke the old sessions
	if m := col.wait(t, 1)[0]; m.Topic != "silent/x" || string(m.Payload) != "in flight" {
		t.Errorf("got %s %q", m.Topic, m.Payload)
	}
}

// TestSubscribeContext: a SUBACK that never comes ends with the caller's
// ctx, and the subscription is withdrawn.
func TestSubscribeContext(t *testing.T) {
	f := newFakeBroker(t, ignoreSubscriptions)
	cfg, _ := testConfig(t, "tcp://"+f.addr)
	c := dial(t, cfg)
	_, err := c.Subscribe(shortCtx(t, 100*time.Millisecond), "never/acked", 1, func(broker.Message) {})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe: got %v, want DeadlineExceeded", err)
	}
	c.mu.Lock()
	n, nf := len(c.subs), len(c.filters)
	c.mu.Unlock()
	if n != 0 || nf != 0 {
		t.Errorf("%d subscriptions and %d filters left registered", n, nf)
	}
}
