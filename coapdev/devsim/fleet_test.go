package devsim

import (
	"context"
	"crypto/rsa"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// testCloud is a minimal server on 127.0.0.1 for the fleet tests: it runs
// the handshake, answers the device Hello and pings, and ignores the rest.
type testCloud struct {
	t    *testing.T
	ln   net.Listener
	key  *rsa.PrivateKey
	pub  *rsa.PublicKey // every device's key (the fleet shares one)
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn map[net.Conn]bool // guarded by mu
}

func newTestCloud(t *testing.T, devicePub *rsa.PublicKey) *testCloud {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &testCloud{t: t, ln: ln, key: serverKey(t), pub: devicePub, conn: map[net.Conn]bool{}}
	c.wg.Go(c.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		c.dropAll()
		c.wg.Wait()
	})
	return c
}

func (c *testCloud) accept() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.conn[conn] = true
		c.mu.Unlock()
		c.wg.Go(func() {
			defer func() {
				c.mu.Lock()
				delete(c.conn, conn)
				c.mu.Unlock()
				_ = conn.Close()
			}()
			c.serve(conn)
		})
	}
}

// dropAll closes every connection.
func (c *testCloud) dropAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conn {
		_ = conn.Close()
	}
}

func (c *testCloud) serve(conn net.Conn) {
	_ = conn.SetDeadline(time.Now().Add(testTimeout))
	sess, err := handshake.Server(conn, handshake.ServerConfig{
		Key: c.key,
		Lookup: func(keys.DeviceID, *rsa.PublicKey) (*rsa.PublicKey, error) {
			return c.pub, nil
		},
	})
	if err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	r := frame.NewReader(conn, sess.Key[:], sess.IV[:], frame.HardMaxFrame)
	w := frame.NewWriter(conn, sess.Key[:], sess.IV[:], frame.HardMaxFrame)
	id := uint16(0x4000)
	for {
		p, err := r.ReadFrame()
		if err != nil {
			return
		}
		m, err := msg.Decode(p)
		if err != nil {
			return
		}
		var out msg.Message
		switch m.Kind() {
		case msg.KindHello:
			id++
			out = msg.NewHello(id, nil, nil)
		case msg.KindPing, msg.KindSubscribe:
			out = msg.NewEmptyAck(m.ID)
		default:
			continue
		}
		b, err := out.Encode()
		if err != nil || w.WriteFrame(b) != nil {
			return
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFleet(t *testing.T) {
	key, err := SharedKey()
	if err != nil {
		t.Fatal(err)
	}
	cloud := newTestCloud(t, &key.PublicKey)
	const n = 24
	f, err := NewFleet(FleetConfig{
		Addr:        cloud.ln.Addr().String(),
		Count:       n,
		Concurrency: 4,
		RetryDelay:  10 * time.Millisecond,
		Config: func(i int) Config {
			return Config{Firmware: allFirmwares[i%len(allFirmwares)], ServerKey: &serverKey(t).PublicKey}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[keys.DeviceID]bool{}
	for i, d := range f.Devices() {
		if d.ID() != FleetID(i) {
			t.Errorf("device %d: got id %v, want %v", i, d.ID(), FleetID(i))
		}
		seen[d.ID()] = true
	}
	if len(seen) != n {
		t.Errorf("got %d distinct ids, want %d", len(seen), n)
	}

	store, err := keys.OpenStore(t.TempDir(), keys.Strict)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Provision(store); err != nil {
		t.Fatal(err)
	}
	if entries, err := store.List(); err != nil || len(entries) != n {
		t.Errorf("store: got %d entries (%v), want %d", len(entries), err, n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	select {
	case <-f.AllConnected():
	case <-time.After(testTimeout):
		t.Fatalf("only %d of %d devices connected", f.Connected(), n)
	}
	if got := f.Connected(); got != n {
		t.Errorf("Connected: got %d, want %d", got, n)
	}
	if got := f.Failed(); got != 0 {
		t.Errorf("Failed: got %d, want 0", got)
	}

	// The server drops everyone: every device comes back.
	cloud.dropAll()
	waitFor(t, "every device to reconnect", func() bool {
		for _, d := range f.Devices() {
			if d.Stats().Connects < 2 {
				return false
			}
		}
		return f.Connected() == n
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Run did not return")
	}
	if got := f.Connected(); got != 0 {
		t.Errorf("Connected after Run: got %d, want 0", got)
	}
}

// TestFleetFailed: attempts that end before the device is up (here the
// server refuses the connection) are counted, and retried.
func TestFleetFailed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: every dial is refused
	f, err := NewFleet(FleetConfig{
		Addr: addr, Count: 2, RetryDelay: time.Millisecond,
		Config: func(int) Config { return Config{Firmware: Photon08, ServerKey: &serverKey(t).PublicKey} },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitFor(t, "failed attempts counted", func() bool { return f.Failed() >= 4 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := f.Connected(); got != 0 {
		t.Errorf("Connected: got %d, want 0", got)
	}
}

func TestFleetConfigErrors(t *testing.T) {
	for _, cfg := range []FleetConfig{
		{Count: 1, Config: func(int) Config { return Config{} }},
		{Addr: "127.0.0.1:1", Config: func(int) Config { return Config{} }},
		{Addr: "127.0.0.1:1", Count: 1},
	} {
		if _, err := NewFleet(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", cfg, err)
		}
	}
	both := FleetConfig{Addr: "127.0.0.1:1", Count: 1, Config: func(int) Config { return Config{} },
		New: func(int) (*Device, error) { return nil, nil }}
	if _, err := NewFleet(both); !errors.Is(err, ErrConfig) {
		t.Errorf("Config and New: got %v, want ErrConfig", err)
	}
	if _, err := NewFleet(FleetConfig{Addr: "127.0.0.1:1", Count: 1, New: func(int) (*Device, error) { return nil, nil }}); !errors.Is(err, ErrConfig) {
		t.Errorf("New without a device: got %v, want ErrConfig", err)
	}
	if _, err := NewFleet(FleetConfig{Addr: "127.0.0.1:1", Count: 1, Config: func(int) Config { return Config{Firmware: Core} }}); !errors.Is(err, ErrConfig) {
		t.Errorf("device without server key: got %v, want ErrConfig", err)
	}
}

// TestFleetOfHeaters: New builds heaters; their temperature events go out.
func TestFleetOfHeaters(t *testing.T) {
	key, err := SharedKey()
	if err != nil {
		t.Fatal(err)
	}
	cloud := newTestCloud(t, &key.PublicKey)
	heaters := make([]*Heater, 3)
	f, err := NewFleet(FleetConfig{
		Addr: cloud.ln.Addr().String(), Count: len(heaters),
		New: func(i int) (*Device, error) {
			h, err := NewHeater(HeaterConfig{
				Device:   Config{Firmware: allFirmwares[i], DeviceID: FleetID(i), ServerKey: &serverKey(t).PublicKey},
				Interval: 10 * time.Millisecond,
			})
			if err != nil {
				return nil, err
			}
			heaters[i] = h
			return h.Device(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitFor(t, "three events from every heater", func() bool {
		for _, h := range heaters {
			if h.Device().Stats().EventsOut < 3 {
				return false
			}
		}
		return true
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
