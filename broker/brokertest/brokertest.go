package brokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Harness is what one case of the suite gets from the implementation under
// test. Build a fresh one in every call of the newHarness function passed to
// Run.
type Harness struct {
	// Client is the implementation under test. The suite closes it.
	Client broker.Client

	// Observer is a second Client on the same broker, independent of Client
	// (its own connection, or its own inline client). The suite closes it.
	Observer broker.Client

	// ConnectWithWill connects a further client to the same broker whose MQTT
	// will is will, and returns once the broker has accepted the connection.
	// The suite calls exactly one of the returned functions, once: kill drops
	// the connection without a DISCONNECT (the broker must publish the will);
	// close disconnects cleanly (it must not). Nil skips the will case.
	ConnectWithWill func(t *testing.T, will broker.Message) (kill, close func())

	// MaxPacketSize is the broker's maximum MQTT packet size in bytes: a
	// Publish whose payload alone is larger must fail with broker.ErrTooLarge.
	// Zero skips the size case.
	MaxPacketSize int

	// QueueSize is the capacity of one subscription's hand-off queue. Zero
	// means unknown: the suite then sizes its bursts for 1024.
	QueueSize int

	// Dropped, when not nil, reports how many messages Client's hand-off
	// queues have dropped so far.
	Dropped func() uint64

	// MQTT5 says that ResponseTopic and CorrelationData published by Client
	// reach Observer's handlers and the other way round.
	MQTT5 bool
}

// Timeouts of the suite. They only bound failures; a passing case never waits
// for them, except quiet, the time a case waits to show that something does
// not arrive (after a marker that proves the path is clear).
const (
	opTimeout  = 10 * time.Second
	waitTimout = 10 * time.Second
	quiet      = 200 * time.Millisecond
)

// Run runs every case of the suite as a subtest of t.
func Run(t *testing.T, newHarness func(t *testing.T) *Harness) {
	t.Helper()
	cases := []struct {
		name string
		fn   func(t *testing.T, h *Harness, p string)
	}{
		{"PublishSubscribe", testPublishSubscribe},
		{"PayloadNotAliased", testPayloadNotAliased},
		{"Wildcards", testWildcards},
		{"OverlappingSubscriptions", testOverlapping},
		{"SameFilterTwice", testSameFilterTwice},
		{"RetainedOnSubscribe", testRetained},
		{"RetainedRemoval", testRetainedRemoval},
		{"QoS1InOrder", testQoS1},
		{"QoSDowngrade", testQoSDowngrade},
		{"Unsubscribe", testUnsubscribe},
		{"Will", testWill},
		{"NoWillOnCleanClose", testNoWillOnClose},
		{"ConcurrentPublishers", testConcurrentPublishers},
		{"InvalidTopic", testInvalidTopic},
		{"TooLarge", testTooLarge},
		{"Closed", testClosed},
		{"CloseIdempotent", testCloseIdempotent},
		{"SlowHandler", testSlowHandler},
		{"ResponseTopic", testResponseTopic},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			if h == nil || h.Client == nil || h.Observer == nil {
				t.Fatal("newHarness returned no Client or Observer")
			}
			p := prefix(t)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				defer cancel()
				if err := h.Client.Close(ctx); err != nil {
					t.Errorf("Client.Close: %v", err)
				}
				if err := h.Observer.Close(ctx); err != nil {
					t.Errorf("Observer.Close: %v", err)
				}
			})
			c.fn(t, h, p)
		})
	}
}

// prefix returns a topic prefix unique to this case.
func prefix(t *testing.T) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := t.Name()
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	return "brokertest/" + name + "-" + hex.EncodeToString(b[:])
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

// collector is a Handler that never blocks: it appends to a slice and
// signals.
type collector struct {
	mu   sync.Mutex
	msgs []broker.Message
	sig  chan struct{} // one token per message; capacity bounds the case
}

func newCollector() *collector {
	return &collector{sig: make(chan struct{}, 100000)}
}

func (c *collector) handle(m broker.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	select {
	case c.sig <- struct{}{}:
	default:
	}
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) all() []broker.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]broker.Message(nil), c.msgs...)
}

// wait waits until the collector holds at least n messages and returns the
// first n.
func (c *collector) wait(t *testing.T, n int) []broker.Message {
	t.Helper()
	deadline := time.NewTimer(waitTimout)
	defer deadline.Stop()
	for {
		if c.len() >= n {
			return c.all()[:n]
		}
		select {
		case <-c.sig:
		case <-deadline.C:
			t.Fatalf("got %d messages, want %d: %v", c.len(), n, summary(c.all()))
			return nil
		}
	}
}

// waitLive waits for a message delivered live (Retain false) and returns
// it. A message published retained just after a SUBSCRIBE may also arrive a
// second time as the subscription's retained message: the broker sends
// retained messages after SUBACK, so the two can cross. Every other message
// the collector holds must be such a copy.
func (c *collector) waitLive(t *testing.T) broker.Message {
	t.Helper()
	deadline := time.NewTimer(waitTimout)
	defer deadline.Stop()
	for {
		ms := c.all()
		for i, m := range ms {
			if m.Retain {
				continue
			}
			for _, o := range ms {
				if o.Topic != m.Topic || !bytes.Equal(o.Payload, m.Payload) {
					t.Errorf("unexpected message besides the live one: %v", summary([]broker.Message{o}))
				}
			}
			return ms[i]
		}
		select {
		case <-c.sig:
		case <-deadline.C:
			t.Fatalf("no live message; got %v", summary(ms))
			return broker.Message{}
		}
	}
}

func summary(ms []broker.Message) string {
	var b strings.Builder
	for i, m := range ms {
		if i == 20 {
			fmt.Fprintf(&b, " ... (%d more)", len(ms)-i)
			break
		}
		fmt.Fprintf(&b, "[%s %q q%d r%v] ", m.Topic, m.Payload, m.QoS, m.Retain)
	}
	return b.String()
}

func subscribe(t *testing.T, c broker.Client, filter string, qos byte, h broker.Handler) func(context.Context) error {
	t.Helper()
	unsub, err := c.Subscribe(ctxT(t), filter, qos, h)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", filter, err)
	}
	return unsub
}

func publish(t *testing.T, c broker.Client, m broker.Message) {
	t.Helper()
	if err := c.Publish(ctxT(t), m); err != nil {
		t.Fatalf("Publish(%q): %v", m.Topic, err)
	}
}

// clearRetained removes a retained message the case left behind.
func clearRetained(t *testing.T, c broker.Client, topic string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		err := c.Publish(ctx, broker.Message{Topic: topic, QoS: 1, Retain: true})
		if err != nil && !errors.Is(err, broker.ErrClosed) {
			t.Errorf("clear retained %q: %v", topic, err)
		}
	})
}

func checkMsg(t *testing.T, got broker.Message, topic, payload string, qos byte, retain bool) {
	t.Helper()
	if got.Topic != topic || string(got.Payload) != payload || got.QoS != qos || got.Retain != retain {
		t.Errorf("got [%s %q q%d r%v], want [%s %q q%d r%v]",
			got.Topic, got.Payload, got.QoS, got.Retain, topic, payload, qos, retain)
	}
}

func testPublishSubscribe(t *testing.T, h *Harness, p string) {
	// Client publishes, Observer receives.
	obs := newCollector()
	subscribe(t, h.Observer, p+"/out", 1, obs.handle)
	publish(t, h.Client, broker.Message{Topic: p + "/out", Payload: []byte("hello"), QoS: 0})
	checkMsg(t, obs.wait(t, 1)[0], p+"/out", "hello", 0, false)

	// Observer publishes, Client receives.
	cl := newCollector()
	subscribe(t, h.Client, p+"/in", 1, cl.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/in", Payload: []byte("world"), QoS: 1})
	checkMsg(t, cl.wait(t, 1)[0], p+"/in", "world", 1, false)

	// An empty payload (not retained) is a message too.
	publish(t, h.Observer, broker.Message{Topic: p + "/in", QoS: 1})
	if got := cl.wait(t, 2)[1]; len(got.Payload) != 0 {
		t.Errorf("got payload %q, want empty", got.Payload)
	}
}

func testPayloadNotAliased(t *testing.T, h *Harness, p string) {
	obs := newCollector()
	subscribe(t, h.Observer, p+"/#", 1, obs.handle)
	buf := []byte("original")
	for i, qos := range []byte{0, 1} {
		publish(t, h.Client, broker.Message{Topic: fmt.Sprintf("%s/%d", p, i), Payload: buf, QoS: qos})
		copy(buf, "CHANGED!") // the caller reuses its buffer at once
		copy(buf, "original")
		copy(buf, "XXXXXXXX")
		buf = []byte("original")
	}
	for _, m := range obs.wait(t, 2) {
		if string(m.Payload) != "original" {
			t.Errorf("%s: got payload %q, want %q: Publish kept the caller's buffer", m.Topic, m.Payload, "original")
		}
	}
}

func topicsOf(ms []broker.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Topic
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func testWildcards(t *testing.T, h *Harness, p string) {
	plus, hash, both := newCollector(), newCollector(), newCollector()
	subscribe(t, h.Client, p+"/+/temp", 1, plus.handle)
	subscribe(t, h.Client, p+"/dev/#", 1, hash.handle)
	subscribe(t, h.Client, p+"/+/+/#", 1, both.handle)

	topics := []string{
		p + "/dev/temp",      // plus, hash, both
		p + "/x/temp",        // plus, both
		p + "/dev/a/b",       // hash, both
		p + "/dev",           // hash ('#' matches its parent level)
		p + "/other/humid",   // both
		p + "/x/temp/deeper", // both
		p + "/x",             // none
		p + "/end/temp",      // marker: plus, both
	}
	for _, tp := range topics {
		publish(t, h.Observer, broker.Message{Topic: tp, Payload: []byte("v"), QoS: 1})
	}
	want := map[*collector][]string{
		plus: {p + "/dev/temp", p + "/x/temp", p + "/end/temp"},
		hash: {p + "/dev/temp", p + "/dev/a/b", p + "/dev"},
		both: {p + "/dev/temp", p + "/x/temp", p + "/dev/a/b", p + "/other/humid", p + "/x/temp/deeper", p + "/end/temp"},
	}
	for c, w := range want {
		got := topicsOf(c.wait(t, len(w)))
		if !equalStrings(got, w) {
			t.Errorf("got %v, want %v", got, w)
		}
	}
	// A marker only hash matches: nothing but it arrives after hash's three.
	publish(t, h.Observer, broker.Message{Topic: p + "/dev", Payload: []byte("end"), QoS: 1})
	checkMsg(t, hash.wait(t, 4)[3], p+"/dev", "end", 1, false)
}

func testOverlapping(t *testing.T, h *Harness, p string) {
	a, b := newCollector(), newCollector()
	subscribe(t, h.Client, p+"/a", 1, a.handle)
	subscribe(t, h.Client, p+"/#", 1, b.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/a", Payload: []byte("1"), QoS: 1})
	publish(t, h.Observer, broker.Message{Topic: p + "/b", Payload: []byte("2"), QoS: 1})
	checkMsg(t, a.wait(t, 1)[0], p+"/a", "1", 1, false)
	got := b.wait(t, 2)
	checkMsg(t, got[0], p+"/a", "1", 1, false)
	checkMsg(t, got[1], p+"/b", "2", 1, false)
	publish(t, h.Observer, broker.Message{Topic: p + "/a", Payload: []byte("3"), QoS: 1})
	a.wait(t, 2)
	b.wait(t, 3)
	time.Sleep(quiet)
	if a.len() != 2 || b.len() != 3 {
		t.Errorf("got %d and %d messages, want 2 and 3 (each subscription gets each message once): %v / %v",
			a.len(), b.len(), summary(a.all()), summary(b.all()))
	}
}

func testSameFilterTwice(t *testing.T, h *Harness, p string) {
	a, b := newCollector(), newCollector()
	unsubA := subscribe(t, h.Client, p+"/x", 1, a.handle)
	subscribe(t, h.Client, p+"/x", 1, b.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/x", Payload: []byte("1"), QoS: 1})
	a.wait(t, 1)
	b.wait(t, 1)
	if err := unsubA(ctxT(t)); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	publish(t, h.Observer, broker.Message{Topic: p + "/x", Payload: []byte("2"), QoS: 1})
	checkMsg(t, b.wait(t, 2)[1], p+"/x", "2", 1, false)
	time.Sleep(quiet)
	if a.len() != 1 || b.len() != 2 {
		t.Errorf("got %d and %d messages, want 1 and 2: %v / %v", a.len(), b.len(), summary(a.all()), summary(b.all()))
	}
}

func testRetained(t *testing.T, h *Harness, p string) {
	for _, tp := range []string{p + "/r/1", p + "/r/2"} {
		clearRetained(t, h.Client, tp)
	}
	publish(t, h.Client, broker.Message{Topic: p + "/r/1", Payload: []byte("one"), QoS: 1, Retain: true})
	publish(t, h.Client, broker.Message{Topic: p + "/r/2", Payload: []byte("two"), QoS: 1, Retain: true})
	publish(t, h.Client, broker.Message{Topic: p + "/r/2", Payload: []byte("two-b"), QoS: 1, Retain: true})

	// Both clients see the retained messages on a new subscription, with
	// Retain set; the newer value replaced the older.
	for name, c := range map[string]broker.Client{"Observer": h.Observer, "Client": h.Client} {
		col := newCollector()
		subscribe(t, c, p+"/r/#", 1, col.handle)
		got := map[string]string{}
		for _, m := range col.wait(t, 2) {
			if !m.Retain {
				t.Errorf("%s: %s: Retain false, want true for a retained delivery", name, m.Topic)
			}
			got[m.Topic] = string(m.Payload)
		}
		want := map[string]string{p + "/r/1": "one", p + "/r/2": "two-b"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
		// A live retained publish arrives with Retain false.
		tp := p + "/live/" + name
		clearRetained(t, h.Client, tp)
		live := newCollector()
		subscribe(t, c, tp, 1, live.handle)
		publish(t, h.Observer, broker.Message{Topic: tp, Payload: []byte(name), QoS: 1, Retain: true})
		checkMsg(t, live.waitLive(t), tp, name, 1, false)
	}

	// A retained message published with QoS 0 is retained too.
	publish(t, h.Observer, broker.Message{Topic: p + "/r/1", Payload: []byte("q0"), QoS: 0, Retain: true})
	// Publish QoS 0 returns before the broker has it: wait until it is there.
	deadline := time.Now().Add(waitTimout)
	for {
		col := newCollector()
		unsub := subscribe(t, h.Observer, p+"/r/1", 1, col.handle)
		m := col.wait(t, 1)[0]
		_ = unsub(ctxT(t))
		if string(m.Payload) == "q0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retained QoS 0 message never replaced the QoS 1 one: got %q", m.Payload)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testRetainedRemoval(t *testing.T, h *Harness, p string) {
	tp := p + "/gone"
	clearRetained(t, h.Client, tp)
	publish(t, h.Client, broker.Message{Topic: tp, Payload: []byte("here"), QoS: 1, Retain: true})
	col := newCollector()
	unsub := subscribe(t, h.Observer, tp, 1, col.handle)
	checkMsg(t, col.wait(t, 1)[0], tp, "here", 1, true)
	if err := unsub(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	publish(t, h.Client, broker.Message{Topic: tp, Payload: nil, QoS: 1, Retain: true})

	// A new subscription gets nothing retained before the marker published
	// after it subscribed. (The removal itself may still arrive live: a
	// broker may acknowledge a QoS 1 publish before it has delivered it.)
	col = newCollector()
	subscribe(t, h.Observer, p+"/#", 1, col.handle)
	publish(t, h.Client, broker.Message{Topic: p + "/marker", Payload: []byte("m"), QoS: 1})
	for i := 1; ; i++ {
		m := col.wait(t, i)[i-1]
		if m.Topic == p+"/marker" {
			checkMsg(t, m, p+"/marker", "m", 1, false)
			break
		}
		if m.Retain || len(m.Payload) != 0 {
			t.Fatalf("removed retained message delivered: %v", summary([]broker.Message{m}))
		}
	}
}

func testQoS1(t *testing.T, h *Harness, p string) {
	const n = 200
	for _, dir := range []struct {
		name     string
		pub, sub broker.Client
	}{{"ClientToObserver", h.Client, h.Observer}, {"ObserverToClient", h.Observer, h.Client}} {
		t.Run(dir.name, func(t *testing.T) {
			col := newCollector()
			tp := p + "/" + dir.name
			subscribe(t, dir.sub, tp, 1, col.handle)
			for i := range n {
				publish(t, dir.pub, broker.Message{Topic: tp, Payload: fmt.Appendf(nil, "%d", i), QoS: 1})
			}
			for i, m := range col.wait(t, n) {
				checkMsg(t, m, tp, fmt.Sprint(i), 1, false)
				if t.Failed() {
					break
				}
			}
		})
	}
}

func testQoSDowngrade(t *testing.T, h *Harness, p string) {
	q0, q1 := newCollector(), newCollector()
	subscribe(t, h.Client, p+"/t", 0, q0.handle)
	subscribe(t, h.Observer, p+"/t", 1, q1.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/t", Payload: []byte("a"), QoS: 1})
	publish(t, h.Observer, broker.Message{Topic: p + "/t", Payload: []byte("b"), QoS: 0})
	got0 := q0.wait(t, 2)
	checkMsg(t, got0[0], p+"/t", "a", 0, false)
	checkMsg(t, got0[1], p+"/t", "b", 0, false)
	got1 := q1.wait(t, 2)
	checkMsg(t, got1[0], p+"/t", "a", 1, false)
	checkMsg(t, got1[1], p+"/t", "b", 0, false)
}

func testUnsubscribe(t *testing.T, h *Harness, p string) {
	a, b := newCollector(), newCollector()
	unsubA := subscribe(t, h.Client, p+"/a", 1, a.handle)
	subscribe(t, h.Client, p+"/b", 1, b.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/a", Payload: []byte("1"), QoS: 1})
	a.wait(t, 1)

	if err := unsubA(ctxT(t)); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	publish(t, h.Observer, broker.Message{Topic: p + "/a", Payload: []byte("2"), QoS: 1})
	publish(t, h.Observer, broker.Message{Topic: p + "/b", Payload: []byte("marker"), QoS: 1})
	b.wait(t, 1)
	time.Sleep(quiet)
	if n := a.len(); n != 1 {
		t.Errorf("got %d messages after unsubscribe, want none: %v", n-1, summary(a.all()[1:]))
	}
	// A second call must not panic; its error is the implementation's.
	_ = unsubA(ctxT(t))
}

func testWill(t *testing.T, h *Harness, p string) {
	if h.ConnectWithWill == nil {
		t.Skip("harness has no ConnectWithWill")
	}
	tp := p + "/state"
	clearRetained(t, h.Observer, tp)
	col := newCollector()
	subscribe(t, h.Observer, tp, 1, col.handle)

	kill, _ := h.ConnectWithWill(t, broker.Message{Topic: tp, Payload: []byte("offline"), QoS: 1, Retain: true})
	kill()
	checkMsg(t, col.waitLive(t), tp, "offline", 1, false)

	// The will was retained: a new subscription sees it.
	late := newCollector()
	subscribe(t, h.Client, tp, 1, late.handle)
	checkMsg(t, late.wait(t, 1)[0], tp, "offline", 1, true)
}

func testNoWillOnClose(t *testing.T, h *Harness, p string) {
	if h.ConnectWithWill == nil {
		t.Skip("harness has no ConnectWithWill")
	}
	tp := p + "/state"
	clearRetained(t, h.Observer, tp)
	col := newCollector()
	subscribe(t, h.Observer, p+"/#", 1, col.handle)

	_, closeClean := h.ConnectWithWill(t, broker.Message{Topic: tp, Payload: []byte("offline"), QoS: 1, Retain: true})
	closeClean()
	publish(t, h.Client, broker.Message{Topic: p + "/marker", Payload: []byte("m"), QoS: 1})
	col.wait(t, 1)
	time.Sleep(quiet)
	for _, m := range col.all() {
		if m.Topic == tp {
			t.Errorf("will published after a clean close: %v", summary([]broker.Message{m}))
		}
	}
}

func testConcurrentPublishers(t *testing.T, h *Harness, p string) {
	const publishers = 8
	total := h.QueueSize
	if total == 0 || total > 1024 {
		total = 1024
	}
	per := total / publishers
	col := newCollector()
	subscribe(t, h.Observer, p+"/pub/#", 1, col.handle)
	self := newCollector()
	subscribe(t, h.Client, p+"/pub/#", 1, self.handle)

	var wg sync.WaitGroup
	var failed atomic.Bool
	for g := range publishers {
		wg.Go(func() {
			tp := fmt.Sprintf("%s/pub/%d", p, g)
			for i := range per {
				qos := byte(i % 2)
				if err := h.Client.Publish(ctxT(t), broker.Message{Topic: tp, Payload: fmt.Appendf(nil, "%d", i), QoS: qos}); err != nil {
					t.Errorf("Publish: %v", err)
					failed.Store(true)
					return
				}
			}
		})
	}
	// Subscriptions come and go while the publishers run.
	wg.Go(func() {
		for i := range 50 {
			if failed.Load() {
				return
			}
			unsub, err := h.Client.Subscribe(ctxT(t), fmt.Sprintf("%s/churn/%d", p, i), 1, func(broker.Message) {})
			if err != nil {
				t.Errorf("Subscribe: %v", err)
				return
			}
			if err := unsub(ctxT(t)); err != nil {
				t.Errorf("unsubscribe: %v", err)
				return
			}
		}
	})
	wg.Wait()
	if failed.Load() {
		return
	}
	for name, c := range map[string]*collector{"Observer": col, "Client": self} {
		// QoS 0 may be lost on a real network in principle, but not on
		// loopback to a healthy broker: every message is counted.
		got := c.wait(t, publishers*per)
		next := map[string]int{}
		for _, m := range got {
			if want := fmt.Sprint(next[m.Topic]); string(m.Payload) != want {
				t.Errorf("%s: %s: got %q, want %q (per-topic order)", name, m.Topic, m.Payload, want)
			}
			next[m.Topic]++
		}
	}
}

func testInvalidTopic(t *testing.T, h *Harness, p string) {
	for _, tp := range []string{"", "+", "#", p + "/+", p + "/#", p + "/a+b", p + "/x#", p + "/nul\x00"} {
		err := h.Client.Publish(ctxT(t), broker.Message{Topic: tp, Payload: []byte("x"), QoS: 1})
		if !errors.Is(err, broker.ErrInvalidTopic) {
			t.Errorf("Publish(%q): got %v, want ErrInvalidTopic", tp, err)
		}
	}
	for _, f := range []string{"", p + "/#/x", p + "/a+", p + "/a#", p + "/+x", p + "/nul\x00"} {
		_, err := h.Client.Subscribe(ctxT(t), f, 1, func(broker.Message) {})
		if !errors.Is(err, broker.ErrInvalidTopic) {
			t.Errorf("Subscribe(%q): got %v, want ErrInvalidTopic", f, err)
		}
	}
	// The Client still works.
	col := newCollector()
	subscribe(t, h.Observer, p+"/ok", 1, col.handle)
	publish(t, h.Client, broker.Message{Topic: p + "/ok", Payload: []byte("x"), QoS: 1})
	col.wait(t, 1)
}

func testTooLarge(t *testing.T, h *Harness, p string) {
	if h.MaxPacketSize == 0 {
		t.Skip("harness has no MaxPacketSize")
	}
	col := newCollector()
	subscribe(t, h.Observer, p+"/#", 1, col.handle)
	for _, qos := range []byte{0, 1} {
		err := h.Client.Publish(ctxT(t), broker.Message{Topic: p + "/big", Payload: make([]byte, h.MaxPacketSize+1), QoS: qos})
		if !errors.Is(err, broker.ErrTooLarge) {
			t.Errorf("Publish QoS %d of %d bytes: got %v, want ErrTooLarge", qos, h.MaxPacketSize+1, err)
		}
	}
	// A payload comfortably under the limit goes through.
	size := h.MaxPacketSize - 1024
	if size > 0 {
		payload := bytes.Repeat([]byte{'x'}, size)
		publish(t, h.Client, broker.Message{Topic: p + "/fits", Payload: payload, QoS: 1})
		got := col.wait(t, 1)[0]
		if got.Topic != p+"/fits" || !bytes.Equal(got.Payload, payload) {
			t.Errorf("got %s with %d bytes, want %s/fits with %d", got.Topic, len(got.Payload), p, size)
		}
	}
	// The connection survived.
	publish(t, h.Client, broker.Message{Topic: p + "/after", Payload: []byte("x"), QoS: 1})
	col.wait(t, 2)
}

func testClosed(t *testing.T, h *Harness, p string) {
	col := newCollector()
	unsub := subscribe(t, h.Client, p+"/#", 1, col.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/before", Payload: []byte("x"), QoS: 1})
	col.wait(t, 1)

	if err := h.Client.Close(ctxT(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	n := col.len()

	if err := h.Client.Publish(ctxT(t), broker.Message{Topic: p + "/x", Payload: []byte("x"), QoS: 1}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: got %v, want ErrClosed", err)
	}
	if err := h.Client.Publish(ctxT(t), broker.Message{Topic: p + "/x", QoS: 0}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish QoS 0 after Close: got %v, want ErrClosed", err)
	}
	if _, err := h.Client.Subscribe(ctxT(t), p+"/y", 1, col.handle); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: got %v, want ErrClosed", err)
	}
	if err := unsub(ctxT(t)); err != nil && !errors.Is(err, broker.ErrClosed) {
		t.Errorf("unsubscribe after Close: got %v, want nil or ErrClosed", err)
	}

	// No handler runs after Close returned.
	obs := newCollector()
	subscribe(t, h.Observer, p+"/#", 1, obs.handle)
	publish(t, h.Observer, broker.Message{Topic: p + "/after", Payload: []byte("x"), QoS: 1})
	obs.wait(t, 1)
	time.Sleep(quiet)
	if got := col.len(); got != n {
		t.Errorf("handler ran %d times after Close: %v", got-n, summary(col.all()[n:]))
	}
}

func testCloseIdempotent(t *testing.T, h *Harness, _ string) {
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := h.Client.Close(ctxT(t)); err != nil {
				t.Errorf("concurrent Close: %v", err)
			}
		})
	}
	wg.Wait()
	if err := h.Client.Close(ctxT(t)); err != nil {
		t.Errorf("Close again: %v", err)
	}
}

func testSlowHandler(t *testing.T, h *Harness, p string) {
	queue := h.QueueSize
	if queue == 0 {
		queue = 1024
	}
	n := queue + 100

	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the suite's Close, which waits for handlers

	var slowCount atomic.Int64
	entered := make(chan struct{}, 1)
	subscribe(t, h.Client, p+"/s/#", 1, func(broker.Message) {
		slowCount.Add(1)
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release // blocks its subscription until the case ends
	})
	fast := newCollector()
	subscribe(t, h.Client, p+"/#", 1, fast.handle)
	other := newCollector()
	subscribe(t, h.Client, p+"/other", 1, other.handle)

	var before uint64
	if h.Dropped != nil {
		before = h.Dropped()
	}
	for i := range n {
		publish(t, h.Observer, broker.Message{Topic: p + "/s/x", Payload: fmt.Appendf(nil, "%d", i), QoS: 1})
		fast.wait(t, i+1) // the fast subscription keeps up message by message
	}
	publish(t, h.Observer, broker.Message{Topic: p + "/other", Payload: []byte("o"), QoS: 1})
	other.wait(t, 1)
	select {
	case <-entered:
	case <-time.After(waitTimout):
		t.Fatal("slow handler never called")
	}
	if h.Dropped != nil {
		// The slow subscription holds one message in its handler and at
		// most QueueSize more queued (paho may hold a few in flight).
		if d := h.Dropped() - before; d == 0 {
			t.Errorf("no drops counted after %d messages to a blocked subscription with a queue of %d", n, queue)
		}
	}
	unblock()
	if got := slowCount.Load(); got > int64(n) {
		t.Errorf("slow handler got %d messages, more than the %d published", got, n)
	}
}

func testResponseTopic(t *testing.T, h *Harness, p string) {
	if !h.MQTT5 {
		t.Skip("implementation does not carry MQTT 5 properties")
	}
	for _, dir := range []struct {
		name     string
		pub, sub broker.Client
	}{{"ClientToObserver", h.Client, h.Observer}, {"ObserverToClient", h.Observer, h.Client}} {
		t.Run(dir.name, func(t *testing.T) {
			col := newCollector()
			tp := p + "/" + dir.name + "/req"
			subscribe(t, dir.sub, tp, 1, col.handle)
			corr := []byte{0, 1, 2, 0xff}
			publish(t, dir.pub, broker.Message{Topic: tp, Payload: []byte("q"), QoS: 1, ResponseTopic: p + "/resp", CorrelationData: corr})
			publish(t, dir.pub, broker.Message{Topic: tp, Payload: []byte("plain"), QoS: 1})
			got := col.wait(t, 2)
			if got[0].ResponseTopic != p+"/resp" || !bytes.Equal(got[0].CorrelationData, corr) {
				t.Errorf("got response topic %q, correlation %x; want %q, %x", got[0].ResponseTopic, got[0].CorrelationData, p+"/resp", corr)
			}
			if got[1].ResponseTopic != "" || len(got[1].CorrelationData) != 0 {
				t.Errorf("plain message got response topic %q, correlation %x; want none", got[1].ResponseTopic, got[1].CorrelationData)
			}
		})
	}
}
