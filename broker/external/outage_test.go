package external

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/internal/mosquittotest"
)

// numbers records which message numbers a subscriber has seen.
type numbers struct {
	mu    sync.Mutex
	seen  map[int]int // number → times received
	bad   []string
	other []broker.Message
	sig   chan struct{}
}

func newNumbers() *numbers { return &numbers{seen: make(map[int]int), sig: make(chan struct{}, 1)} }

func (n *numbers) handle(m broker.Message) {
	n.mu.Lock()
	if m.Topic == "outage/n" {
		if i, err := strconv.Atoi(string(m.Payload)); err == nil {
			n.seen[i]++
		} else {
			n.bad = append(n.bad, string(m.Payload))
		}
	} else {
		n.other = append(n.other, m)
	}
	n.mu.Unlock()
	select {
	case n.sig <- struct{}{}:
	default:
	}
}

// wait waits until every number below total has been seen and returns how
// many deliveries were duplicates.
func (n *numbers) wait(t *testing.T, total int) (dups int) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		n.mu.Lock()
		missing, d := 0, 0
		first := -1
		for i := range total {
			switch c := n.seen[i]; {
			case c == 0:
				missing++
				if first < 0 {
					first = i
				}
			case c > 1:
				d += c - 1
			}
		}
		bad := len(n.bad)
		n.mu.Unlock()
		if bad > 0 {
			t.Fatalf("%d payloads were not numbers", bad)
		}
		if missing == 0 {
			return d
		}
		select {
		case <-n.sig:
		case <-deadline.C:
			t.Fatalf("%d of %d numbers never arrived (first missing: %d)", missing, total, first)
		}
	}
}

func (n *numbers) others() []broker.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]broker.Message(nil), n.other...)
}

// TestOutage: a producer publishes a numbered QoS 1 stream through the
// client while Mosquitto is killed (SIGKILL) and restarted on the same port.
// Every number reaches the subscriber at least once, and the subscription
// works again without anyone calling Subscribe.
func TestOutage(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{
		Persistence:      true,
		AutosaveInterval: time.Second,
		Extra: []string{
			// What a SIGKILL loses inside the broker is Mosquitto's
			// durability, not the client's: with an in-flight limit (20 by
			// default) messages it has acknowledged to the producer wait in
			// its memory for the subscriber and die with it. Without the
			// limit it writes them to the subscriber before it sends PUBACK.
			"max_inflight_messages 0",
			// The subscriber's session queues what the producer resends
			// before the subscriber is back; the default cap (1000) would
			// drop part of it.
			"max_queued_messages 0",
		},
	})
	const total = 2000
	const killAt = 600

	// The subscriber keeps a persistent session, which Mosquitto restores
	// from its database after the restart, so the messages the producer
	// resends before the subscriber has reconnected are queued for it. It
	// also re-subscribes by itself on every connect (TestStateLoss shows
	// that alone).
	got := newNumbers()
	scfg, _ := testConfig(t, mq.URL)
	scfg.ClientID, scfg.PersistentSession = "outage-subscriber", true
	scfg.QueueSize = 2 * total
	sub := dialWith(t, scfg, func(c *Client) {
		if _, err := c.Subscribe(ctxT(t), "outage/#", 1, got.handle); err != nil {
			t.Fatal(err)
		}
	})
	subscribed := time.Now()
	// Mosquitto saves sessions only on its autosave timer: wait for a save
	// that includes the subscription.
	db := filepath.Join(mq.Dir, "mosquitto.db")
	waitUntil(t, "mosquitto saved the session", func() bool {
		st, err := os.Stat(db)
		return err == nil && st.ModTime().After(subscribed)
	})

	pcfg, _ := testConfig(t, mq.URL)
	prod := dial(t, pcfg)
	reached := make(chan struct{})
	done := make(chan error, 1)
	go func() { // the producer; the test waits for done
		for i := range total {
			if i == killAt {
				close(reached)
			}
			err := prod.Publish(context.Background(), broker.Message{Topic: "outage/n", Payload: []byte(strconv.Itoa(i)), QoS: 1})
			if err != nil {
				done <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
		}
		done <- nil
	}()

	<-reached
	mq.Kill()
	waitUntil(t, "both clients notice", func() bool { return !prod.Ready() && !sub.Ready() })
	mq.Restart()

	if err := <-done; err != nil {
		t.Fatalf("producer: %v", err)
	}
	dups := got.wait(t, total)

	ps, ss := prod.Stats(), sub.Stats()
	t.Logf("producer: %+v", ps)
	t.Logf("subscriber: %+v", ss)
	t.Logf("all %d numbers arrived; %d duplicate deliveries", total, dups)
	if ps.Resent == 0 || ps.Connects != 2 || ss.Connects != 2 || ss.Dropped != 0 || ps.BufferFull != 0 {
		t.Errorf("producer %+v, subscriber %+v", ps, ss)
	}

	// The subscription works again; nobody called Subscribe.
	if err := prod.Publish(ctxT(t), broker.Message{Topic: "outage/after", Payload: []byte("x"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a message after the outage", func() bool { return len(got.others()) > 0 })
}

// TestStateLoss: Mosquitto without persistence restarts and forgets every
// subscription; the client restores its own, before it reports ready.
func TestStateLoss(t *testing.T) {
	for _, how := range []string{"kill", "stop"} {
		t.Run(how, func(t *testing.T) {
			mq := mosquittotest.Start(t, mosquittotest.Options{})
			scfg, slb := testConfig(t, mq.URL)
			sub := dial(t, scfg)
			col := newCollector()
			if _, err := sub.Subscribe(ctxT(t), "loss/#", 1, col.handle); err != nil {
				t.Fatal(err)
			}
			pcfg, _ := testConfig(t, mq.URL)
			prod := dial(t, pcfg)

			if how == "kill" {
				mq.Kill()
			} else {
				mq.Stop()
			}
			waitUntil(t, "both clients notice", func() bool { return !prod.Ready() && !sub.Ready() })
			mq.Restart()
			for _, c := range []*Client{sub, prod} {
				if err := c.WaitReady(ctxT(t)); err != nil {
					t.Fatal(err)
				}
			}
			if err := prod.Publish(ctxT(t), broker.Message{Topic: "loss/x", Payload: []byte("after"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			if m := col.wait(t, 1)[0]; m.Topic != "loss/x" || string(m.Payload) != "after" {
				t.Errorf("got %s %q", m.Topic, m.Payload)
			}
			slb.waitLog(t, "level=WARN", "broker connection lost")
			if n := len(slb.lines("broker connected")); n != 2 {
				t.Errorf("%d connect lines, want 2", n)
			}
		})
	}
}
