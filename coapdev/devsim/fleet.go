package devsim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// Fleet defaults.
const (
	DefaultFleetConcurrency = 16
	DefaultFleetRetryDelay  = time.Second
)

// FleetConfig configures a Fleet.
type FleetConfig struct {
	// Addr is the server's TCP address, host:port.
	Addr string
	// Count is the number of devices.
	Count int
	// Config returns device i's Config (0 <= i < Count). A zero DeviceID
	// becomes FleetID(i); a nil DeviceKey uses SharedKey(), so the whole
	// fleet shares one key (see Provision). Exactly one of Config and New
	// is required.
	Config func(i int) Config
	// New, when set instead of Config, makes device i itself (for devices
	// built around an application, e.g. NewHeater(...).Device()). Its
	// device must have a unique, non-zero id.
	New func(i int) (*Device, error)
	// Concurrency bounds the connections in their handshake at once
	// (default 16): the server's RSA work is the cost of a connect.
	Concurrency int
	// RetryDelay is the pause before a device whose connection ended
	// connects again (default 1 s; negative: it does not reconnect).
	RetryDelay time.Duration
	// Logger receives one Debug line per ended connection; nil discards.
	Logger *slog.Logger
}

// Fleet runs many simulated devices against one server, for
// `spark2mqtt simulate --count N` and load tests. Its methods are safe for
// concurrent use.
type Fleet struct {
	// Immutable after NewFleet.
	cfg  FleetConfig
	devs []*Device

	connected atomic.Int64
	failed    atomic.Int64 // connection attempts that ended before the device was up
	allOnce   sync.Once
	allUp     chan struct{} // closed the first time every device is connected; never reopened
}

// FleetID returns the deterministic device id of fleet member i: the bytes
// "f1ee7" (hex f1 ee 70) followed by i as a big-endian uint64, so ids are
// stable across runs and easy to tell apart from real ones.
func FleetID(i int) keys.DeviceID {
	var id keys.DeviceID
	id[0], id[1], id[2] = 0xf1, 0xee, 0x70
	binary.BigEndian.PutUint64(id[4:], uint64(i))
	return id
}

// NewFleet creates the fleet's devices (no connection yet). Errors:
// ErrConfig, or New's for a device.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	if cfg.Count <= 0 || (cfg.Config == nil) == (cfg.New == nil) || cfg.Addr == "" {
		return nil, fmt.Errorf("%w: fleet needs Addr, Count > 0 and one of Config and New", ErrConfig)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultFleetConcurrency
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = DefaultFleetRetryDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, devs: make([]*Device, cfg.Count), allUp: make(chan struct{})}
	for i := range f.devs {
		if cfg.New != nil {
			d, err := cfg.New(i)
			if err == nil && d == nil {
				err = fmt.Errorf("%w: New returned no device", ErrConfig)
			}
			if err != nil {
				return nil, fmt.Errorf("devsim: fleet device %d: %w", i, err)
			}
			f.devs[i] = d
			continue
		}
		dc := cfg.Config(i)
		if dc.DeviceID == (keys.DeviceID{}) {
			dc.DeviceID = FleetID(i)
		}
		d, err := New(dc)
		if err != nil {
			return nil, fmt.Errorf("devsim: fleet device %d: %w", i, err)
		}
		f.devs[i] = d
	}
	return f, nil
}

// Devices returns the fleet's devices, index i being device i.
func (f *Fleet) Devices() []*Device { return f.devs }

// Provision adds every device's public key to store, as an operator
// provisions devices; a Core cannot be learnt in TOFU mode, a Photon can
// (keys.TOFU), so a Photon fleet needs no provisioning with a TOFU store.
func (f *Fleet) Provision(store *keys.Store) error {
	for _, d := range f.devs {
		if err := store.Add(d.ID(), d.PublicKey()); err != nil {
			return fmt.Errorf("devsim: provision %v: %w", d.ID(), err)
		}
	}
	return nil
}

// Connected returns how many devices are connected now.
func (f *Fleet) Connected() int { return int(f.connected.Load()) }

// Failed returns how many connection attempts ended before their device
// was up: refused, timed out, or dropped during the handshake or the Hello
// exchange (not counting attempts cut short by Run's ctx).
func (f *Fleet) Failed() int { return int(f.failed.Load()) }

// AllConnected returns a channel closed the first time every device of the
// fleet is connected at once.
func (f *Fleet) AllConnected() <-chan struct{} { return f.allUp }

// Run connects every device to the server, at most Concurrency in their
// handshake at a time, and keeps each connected (reconnecting after
// RetryDelay) until ctx ends. It returns nil then, after every device's
// connection has ended.
func (f *Fleet) Run(ctx context.Context) error {
	sem := make(chan struct{}, f.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, d := range f.devs {
		wg.Go(func() { f.runDevice(ctx, d, sem) })
	}
	wg.Wait()
	return nil
}

// runDevice keeps one device connected until ctx ends.
func (f *Fleet) runDevice(ctx context.Context, d *Device, sem chan struct{}) {
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		var once sync.Once
		release := func() { once.Do(func() { <-sem }) }
		var up atomic.Bool
		d.mu.Lock()
		d.onUp = func() {
			release()
			up.Store(true)
			if f.connected.Add(1) == int64(len(f.devs)) {
				f.allOnce.Do(func() { close(f.allUp) })
			}
		}
		d.mu.Unlock()
		err := d.Dial(ctx, f.cfg.Addr)
		release()
		if up.Load() {
			f.connected.Add(-1)
		} else if ctx.Err() == nil {
			f.failed.Add(1)
		}
		if ctx.Err() != nil || f.cfg.RetryDelay < 0 {
			return
		}
		if err != nil && !errors.Is(err, ErrPeerClosed) {
			f.cfg.Logger.Debug("fleet device ended", "device", d.ID().String(), "err", err)
		}
		t := time.NewTimer(f.cfg.RetryDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}
