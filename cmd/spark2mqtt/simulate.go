package main

import (
	"bufio"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// simulatorKeyFile holds the simulated devices' RSA-1024 key (one key for
// all of them: the server keeps a public key per device id, and generating
// thousands of keys would take minutes).
const simulatorKeyFile = "simulator_key.pem"

// runSimulate implements `spark2mqtt simulate`: one or many simulated
// devices connected to a spark2mqtt server until ctx ends.
func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "127.0.0.1:5683", "device address of the spark2mqtt server")
	dataDir := fs.String("data", "data", "the server's data dir: its public key is read from there and, with --register, the devices' keys are written there")
	serverKey := fs.String("server-key", "", "the server's public key (PEM or DER); default: <data>/server_key.pub.pem")
	register := fs.Bool("register", false, "register the simulated devices' keys in <data>/device_keys (as `spark2mqtt keys add` would)")
	heater := fs.Bool("heater", false, "run the water heater: function heater (on/off), variables temp and state, event temperature")
	interval := fs.Duration("interval", 10*time.Second, "heater: period of the temperature event")
	count := fs.Int("count", 1, "number of simulated devices")
	idFlag := fs.String("id", "", "device id (24 hex digits); with --count, the first id (the others count up); default f1ee70000000000000000000")
	firmware := fs.String("firmware", "core", "core, photon07 (Photon 0.4-0.7) or photon08 (Photon 0.8+)")
	keyFile := fs.String("key", "", "the devices' RSA-1024 private key (PEM), created if missing; default: <data>/simulator_key.pem")
	concurrency := fs.Int("concurrency", devsim.DefaultFleetConcurrency, "with --count: handshakes in flight at once")
	events := fs.Int("events", 0, "load test: once every device is connected, publish this many events in all, spread evenly over the devices (their firmware rate limit off), then keep the devices connected")
	eventName := fs.String("event", "load", "with --events: the event name")
	rate := fs.Float64("rate", 0, "with --events: events per second for the whole fleet (0: as fast as the devices can)")
	startStdin := fs.Bool("start-stdin", false, "with --events: wait for a line on standard input before publishing (lets a load test check the server first)")
	verbose := fs.Bool("v", false, "log every message")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if *count < 1 || *count > 100000 {
		return fmt.Errorf("%w: simulate: --count %d out of range 1..100000", errUsage, *count)
	}
	if *events < 0 || *rate < 0 || (*events > 0 && *heater) {
		return fmt.Errorf("%w: simulate: --events and --rate must not be negative, and --events does not go with --heater", errUsage)
	}
	fw, err := devsim.ParseFirmware(*firmware)
	if err != nil {
		return fmt.Errorf("%w: simulate: %w", errUsage, err)
	}
	first := devsim.FleetID(0)
	if *idFlag != "" {
		if first, err = keys.ParseDeviceID(*idFlag); err != nil {
			return fmt.Errorf("%w: simulate: --id: %w", errUsage, err)
		}
	}
	if *serverKey == "" {
		*serverKey = keys.PublicKeyPath(serverKeyPath(*dataDir))
	}
	b, err := os.ReadFile(*serverKey)
	if err != nil {
		return fmt.Errorf("simulate: server key: %w (start the server once, or run `spark2mqtt keys server`)", err)
	}
	spub, err := keys.ParsePublicKey(b)
	if err != nil {
		return fmt.Errorf("simulate: server key %s: %w", *serverKey, err)
	}
	if *keyFile == "" {
		*keyFile = filepath.Join(*dataDir, simulatorKeyFile)
	}
	dkey, err := loadOrCreateDeviceKey(*keyFile)
	if err != nil {
		return err
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	mk := func(i int) devsim.Config {
		return devsim.Config{
			Firmware:  fw,
			DeviceID:  addToID(first, i),
			DeviceKey: dkey,
			ServerKey: spub,
			Logger:    log,
			// A load test's devices publish far faster than the firmware's
			// 4 per second.
			NoRateLimit: *events > 0,
		}
	}
	fc := devsim.FleetConfig{Addr: *server, Count: *count, Concurrency: *concurrency, Logger: log, Config: mk}
	if *heater {
		fc.Config = nil
		fc.New = func(i int) (*devsim.Device, error) {
			h, err := devsim.NewHeater(devsim.HeaterConfig{Device: mk(i), Interval: *interval})
			if err != nil {
				return nil, err
			}
			return h.Device(), nil
		}
	}
	fleet, err := devsim.NewFleet(fc)
	if err != nil {
		return err
	}
	if *register {
		mode := keys.Strict
		store, err := keys.OpenStore(deviceKeysPath(*dataDir), mode)
		if err != nil {
			return err
		}
		if err := fleet.Provision(store); err != nil {
			return err
		}
	}
	if *count == 1 {
		fmt.Fprintf(stdout, "simulating %s %s against %s\n", fw, first, *server)
	} else {
		fmt.Fprintf(stdout, "simulating %d %s devices (%s ...) against %s\n", *count, fw, first, *server)
	}
	start := time.Now()
	var wg sync.WaitGroup
	defer wg.Wait()
	// Ends when ctx ends, or once all devices are up (and, with --events,
	// the load has been published).
	wg.Go(func() {
		select {
		case <-fleet.AllConnected():
			fmt.Fprintf(stdout, "all %d connected in %v, %d failed attempts\n", *count, time.Since(start).Round(time.Millisecond), fleet.Failed())
		case <-ctx.Done():
			return
		}
		if *events > 0 {
			if *startStdin && !lineFrom(ctx, os.Stdin) {
				return
			}
			publishLoad(ctx, stdout, fleet.Devices(), *events, *eventName, *rate)
		}
	})
	return fleet.Run(ctx)
}

// lineFrom waits for a line (or the end) of r, or for ctx's end (false).
func lineFrom(ctx context.Context, r io.Reader) bool {
	got := make(chan struct{})
	go func() { // ends with the read; a process-wide stdin read cannot be cancelled
		_, _ = bufio.NewReader(r).ReadString('\n')
		close(got)
	}()
	select {
	case <-got:
		return true
	case <-ctx.Done():
		return false
	}
}

// publishLoad publishes n events named name from devs, round robin, at rate
// events per second in all (0: as fast as they can). At full speed each
// device publishes on its own goroutine. At a rate, a few goroutines share
// the devices (each device stays on one, so its events keep their order)
// and follow the fleet's schedule, sleeping only when they are more than
// loadSlack ahead of it: a timer wake-up per millisecond or so instead of
// one per event, which would cost the simulator more than the event itself.
// A device (or goroutine) behind its schedule catches up at once, so the
// rate holds on average. It prints a line when it starts and one with the
// outcome when every device is done.
func publishLoad(ctx context.Context, stdout io.Writer, devs []*devsim.Device, n int, name string, rate float64) {
	fmt.Fprintf(stdout, "publishing %d events at %s\n", n, rateText(rate))
	var interval time.Duration // between two events of the fleet
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	data := []byte("48.5")
	var sent, failed atomic.Int64
	emit := func(d *devsim.Device) {
		if d.Emit(ctx, name, data, 60, false) == nil {
			sent.Add(1)
		} else {
			failed.Add(1)
		}
	}
	var wg sync.WaitGroup
	start := time.Now()
	if interval == 0 {
		for i, d := range devs {
			if i >= n {
				break
			}
			wg.Go(func() {
				// Device i publishes the fleet's events i, i+len(devs), ...
				for k := i; k < n && ctx.Err() == nil; k += len(devs) {
					emit(d)
				}
			})
		}
	} else {
		groups := min(len(devs), loadGoroutines)
		for g := range groups {
			wg.Go(func() {
				t := time.NewTimer(time.Hour)
				t.Stop()
				defer t.Stop()
				// This goroutine's devices are g, g+groups, ...; device i
				// publishes the fleet's events i, i+len(devs), ..., event k
				// being due at start + k×interval.
				for m := 0; ; m++ {
					for i := g; i < len(devs); i += groups {
						k := i + m*len(devs)
						if k >= n {
							return
						}
						if wait := time.Until(start.Add(time.Duration(k) * interval)); wait > loadSlack {
							t.Reset(wait)
							select {
							case <-t.C:
							case <-ctx.Done():
								return
							}
						}
						emit(devs[i])
					}
				}
			})
		}
	}
	wg.Wait()
	took := time.Since(start)
	fmt.Fprintf(stdout, "published %d events in %v (%.0f/s), %d failed\n", sent.Load(), took.Round(time.Millisecond),
		float64(sent.Load())/took.Seconds(), failed.Load())
}

// The shape of publishLoad's schedule at a rate: how many goroutines share
// the devices, and how far ahead of its schedule one may publish.
const (
	loadGoroutines = 8
	loadSlack      = time.Millisecond
)

func rateText(rate float64) string {
	if rate <= 0 {
		return "full speed"
	}
	return fmt.Sprintf("%.0f/s", rate)
}

// addToID returns id + n, counting in the last four bytes.
func addToID(id keys.DeviceID, n int) keys.DeviceID {
	v := uint32(id[8])<<24 | uint32(id[9])<<16 | uint32(id[10])<<8 | uint32(id[11])
	v += uint32(n)
	id[8], id[9], id[10], id[11] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return id
}

// loadOrCreateDeviceKey reads a PEM RSA-1024 private key, or creates one.
func loadOrCreateDeviceKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		k, err := devsim.GenerateKey()
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		p := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
		if err := os.WriteFile(path, p, 0o600); err != nil {
			return nil, err
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("simulate: device key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("simulate: device key %s: not PEM", path)
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("simulate: device key %s: %w", path, err)
	}
	if k.N.BitLen() != 1024 || k.E != 65537 {
		return nil, fmt.Errorf("simulate: device key %s: want RSA-1024 with e=65537", path)
	}
	return k, nil
}
