package embedded

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// glog (imported by badger's cache, ristretto) starts this goroutine
		// in init and never stops it; see
		// https://github.com/DataDog/dd-trace-go/issues/1469 for the same
		// report against glog.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"))
}

const testTimeout = 30 * time.Second

// testConfig is a Config on loopback ports chosen by the kernel.
func testConfig() Config {
	return Config{Addr: "127.0.0.1:0"}
}

// startBroker builds and starts a broker and closes it at the end of the test.
func startBroker(t testing.TB, cfg Config) *Broker {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { closeBroker(t, b) })
	return b
}

func closeBroker(t testing.TB, b *Broker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pahoOptions returns options for a paho client of the broker at url.
func pahoOptions(url, id string) *paho.ClientOptions {
	return paho.NewClientOptions().
		AddBroker(url).
		SetClientID(id).
		SetProtocolVersion(4). // no silent fallback to 3.1 after a refusal
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(testTimeout).
		SetWriteTimeout(testTimeout).
		SetKeepAlive(30 * time.Second)
}

// connectPaho connects a paho client and disconnects it at the end of the test.
func connectPaho(t testing.TB, opts *paho.ClientOptions) paho.Client {
	t.Helper()
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("paho connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func tcpURL(b *Broker) string { return "tcp://" + b.Addr().String() }

// wait waits for a paho token, bounded by ctx.
func wait(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pahoClient adapts a paho client to broker.Client for the conformance
// suite's Observer: a network client of the embedded broker. Its handlers
// are the suite's collectors, which never block, so it needs no hand-off.
type pahoClient struct {
	c      paho.Client
	closed atomic.Bool
	mu     sync.Mutex
	refs   map[string]int // subscriptions per filter
}

func newPahoClient(t testing.TB, url, id string) *pahoClient {
	return &pahoClient{c: connectPaho(t, pahoOptions(url, id)), refs: map[string]int{}}
}

func (p *pahoClient) Publish(ctx context.Context, m broker.Message) error {
	if p.closed.Load() {
		return broker.ErrClosed
	}
	return wait(ctx, p.c.Publish(m.Topic, m.QoS, m.Retain, m.Payload))
}

func (p *pahoClient) Subscribe(ctx context.Context, filter string, qos byte, h broker.Handler) (func(context.Context) error, error) {
	if p.closed.Load() {
		return nil, broker.ErrClosed
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refs[filter] > 0 {
		return nil, errors.New("pahoClient: one subscription per filter")
	}
	err := wait(ctx, p.c.Subscribe(filter, qos, func(_ paho.Client, m paho.Message) {
		h(broker.Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retain: m.Retained()})
	}))
	if err != nil {
		return nil, err
	}
	p.refs[filter]++
	var once sync.Once
	return func(ctx context.Context) error {
		var err error
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.refs[filter]--
			if !p.closed.Load() {
				err = wait(ctx, p.c.Unsubscribe(filter))
			}
		})
		return err
	}, nil
}

func (p *pahoClient) Close(context.Context) error {
	if p.closed.CompareAndSwap(false, true) {
		p.c.Disconnect(100)
	}
	return nil
}

// connectWithWill connects a paho client with the given will whose TCP
// connection the test can drop without a DISCONNECT.
func connectWithWill(t *testing.T, brokerURL string, will broker.Message) (kill, closeClean func()) {
	t.Helper()
	var mu sync.Mutex
	var conn net.Conn
	opts := pahoOptions(brokerURL, fmt.Sprintf("will-%d", time.Now().UnixNano())).
		SetBinaryWill(will.Topic, will.Payload, will.QoS, will.Retain).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", u.Host, testTimeout)
			mu.Lock()
			conn = c
			mu.Unlock()
			return c, err
		})
	c := connectPaho(t, opts)
	kill = func() {
		mu.Lock()
		defer mu.Unlock()
		_ = conn.Close()
	}
	closeClean = func() { c.Disconnect(250) }
	return kill, closeClean
}

// collector gathers messages from a handler that never blocks.
type collector struct {
	mu   sync.Mutex
	msgs []broker.Message
}

func (c *collector) handle(m broker.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
}

func (c *collector) all() []broker.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]broker.Message(nil), c.msgs...)
}

func (c *collector) wait(t testing.TB, n int) []broker.Message {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d messages", n), func() bool { return len(c.all()) >= n })
	return c.all()
}

// pahoCollector subscribes a paho client and gathers what it receives.
func pahoCollector(t testing.TB, c paho.Client, filter string, qos byte) *collector {
	t.Helper()
	col := &collector{}
	err := wait(ctxT(t), c.Subscribe(filter, qos, func(_ paho.Client, m paho.Message) {
		col.handle(broker.Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retain: m.Retained()})
	}))
	if err != nil {
		t.Fatalf("paho subscribe %q: %v", filter, err)
	}
	return col
}
