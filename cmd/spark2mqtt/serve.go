package main

import (
	"context"
	"crypto/rsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spark2mqtt/spark2mqtt/bridge"
	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/broker/embedded"
	"github.com/spark2mqtt/spark2mqtt/broker/external"
	"github.com/spark2mqtt/spark2mqtt/coapdev"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// runServeCommand implements `spark2mqtt serve`.
func runServeCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { _ = printUsage(stdout) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: serve takes no arguments (configuration is in SPARK2MQTT_* variables; see serve --help)", errUsage)
	}
	c, err := loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(c, stderr)
	return withSignals(func(ctx context.Context) error { return serve(ctx, c, log) })
}

// mqttBroker is the broker side of serve: a Client for the bridge and how
// to end it.
type mqttBroker struct {
	client broker.Client
	close  func(ctx context.Context) error
}

// serve runs spark2mqtt until ctx ends, then shuts down in order: stop
// accepting devices and close their sessions, stop the bridge (which
// publishes the devices offline and the bridge state offline), close the
// broker.
func serve(ctx context.Context, c config, log *slog.Logger) error {
	log.Info("starting", "version", version, "data_dir", c.DataDir)
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	priv, created, err := keys.LoadOrCreateServerKey(serverKeyPath(c.DataDir))
	if err != nil {
		return fmt.Errorf("server key: %w", err)
	}
	if created {
		log.Info("server key created", "path", serverKeyPath(c.DataDir), "hint", "spark2mqtt keys server --host HOST writes what a device is flashed with")
	}
	mode, err := keys.ParseMode(c.KeyMode)
	if err != nil {
		return err
	}
	store, err := keys.OpenStore(deviceKeysPath(c.DataDir), mode)
	if err != nil {
		return fmt.Errorf("device keys: %w", err)
	}
	devices, err := bridge.LoadDevicesFile(filepath.Join(c.DataDir, devicesFile))
	if err != nil {
		return err
	}

	will := broker.Message{Topic: c.BaseTopic + "/bridge/state", Payload: []byte("offline"), QoS: 1, Retain: true}
	// The external client reconnects on its own; after each connect the
	// bridge puts back its retained state (the broker published our will,
	// and may have lost everything if it restarted without persistence).
	var running atomic.Pointer[bridge.Bridge]
	onConnect := func() {
		br := running.Load()
		if br == nil {
			return // Run publishes the state when it starts
		}
		rctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
		defer cancel()
		if err := br.Republish(rctx); err != nil {
			log.Warn("republish after broker reconnect", "err", err)
		}
	}
	mb, err := startBroker(c, log, &will, onConnect)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
		defer cancel()
		if err := mb.close(cctx); err != nil {
			log.Warn("broker close", "err", err)
		}
	}()

	br, err := bridge.New(bridge.Config{
		Client:          mb.client,
		BaseTopic:       c.BaseTopic,
		PollInterval:    c.PollInterval,
		CallTimeout:     c.CallTimeout,
		QueueTTL:        c.QueueTTL,
		Devices:         devices,
		Known:           func(id string) bool { return known(store, id) },
		Discovery:       c.HADiscovery,
		DiscoveryPrefix: c.HAPrefix,
		Version:         version,
		Logger:          log.With("component", "bridge"),
		ShutdownTimeout: c.ShutdownTimeout,
	})
	if err != nil {
		return err
	}
	running.Store(br)
	srv, err := coapdev.NewServer(coapdev.Config{
		Keys:             lookupWithHint(store),
		ServerKey:        priv,
		Handler:          br.Handler(),
		Logger:           log,
		HandshakeTimeout: c.HandshakeTimeout,
		IdleTimeout:      c.IdleTimeout,
		RequestTimeout:   c.CallTimeout,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.DeviceListen)
	if err != nil {
		return fmt.Errorf("device listener: %w", err)
	}
	log.Info("listening", "what", "devices", "addr", ln.Addr().String(), "key_mode", c.KeyMode)

	// The bridge outlives the device server: sessions end first (their
	// ends reach the bridge), then the bridge stops.
	bctx, stopBridge := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBridge()
	bridgeDone := make(chan error, 1)
	// Owned by serve: it waits on bridgeDone before returning.
	go func() { bridgeDone <- br.Run(bctx) }()

	serveErr := srv.Serve(ctx, ln)
	if serveErr != nil && ctx.Err() == nil {
		log.Error("device server", "err", serveErr)
	}
	log.Info("device sessions closed; stopping the bridge")
	stopBridge()
	var bridgeErr error
	select {
	case bridgeErr = <-bridgeDone:
	case <-time.After(c.ShutdownTimeout + 2*time.Second): // the bridge bounds its own stop by ShutdownTimeout
		bridgeErr = errors.New("bridge did not stop within the shutdown timeout")
	}
	if ctx.Err() == nil {
		return errors.Join(serveErr, bridgeErr)
	}
	if bridgeErr != nil {
		log.Warn("bridge stop", "err", bridgeErr)
	}
	log.Info("stopped")
	return nil
}

// lookupWithHint is store.Lookup whose refusals say how to register the
// device; the device server logs them in its "device refused" line.
func lookupWithHint(store *keys.Store) coapdev.KeyLookup {
	return func(id keys.DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
		pub, err := store.Lookup(id, offered)
		switch {
		case err == nil:
			return pub, nil
		case errors.Is(err, keys.ErrUnknownDevice) && offered != nil && store.Mode() == keys.Strict:
			return nil, fmt.Errorf("%w; its offered key was saved: trust it with `spark2mqtt keys accept %s`", err, id)
		case errors.Is(err, keys.ErrUnknownDevice):
			return nil, fmt.Errorf("%w; register it with `spark2mqtt keys add %s KEYFILE`", err, id)
		case errors.Is(err, keys.ErrKeyMismatch):
			return nil, fmt.Errorf("%w; if the device really has a new key: `spark2mqtt keys remove %s`, then add the new one", err, id)
		}
		return nil, err
	}
}

// known reports whether the key store has a key for the device id, so the
// bridge holds calls for it while it is offline.
func known(store *keys.Store, id string) bool {
	did, err := keys.ParseDeviceID(id)
	if err != nil {
		return false
	}
	_, err = store.Lookup(did, nil)
	return err == nil
}

// startBroker starts the embedded broker, or connects to the external one
// named by MQTT_URL (retrying in the background until it is reachable).
func startBroker(c config, log *slog.Logger, will *broker.Message, onConnect func()) (*mqttBroker, error) {
	if c.MQTTURL == "" {
		eb, err := embedded.New(embedded.Config{
			Addr:          c.MQTTListen,
			TLSCertFile:   c.MQTTTLSCert,
			TLSKeyFile:    c.MQTTTLSKey,
			TLSAddr:       c.MQTTTLSListen,
			WebSocketAddr: c.MQTTWSListen,
			DataDir:       c.DataDir,
			UsersFile:     c.MQTTUsersFile,
			BaseTopic:     c.BaseTopic,
			Will:          will,
			Logger:        log.With("component", "mqtt"),
		})
		if err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		if err := eb.Start(); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		// The embedded broker logs each of its listeners ("mqtt listening").
		cl := eb.NewClient()
		return &mqttBroker{client: cl, close: func(ctx context.Context) error {
			return errors.Join(cl.Close(ctx), eb.Close(ctx))
		}}, nil
	}
	xc, err := external.New(external.Config{
		URL:                c.MQTTURL,
		Username:           c.MQTTUsername,
		Password:           c.MQTTPassword,
		ClientID:           c.MQTTClientID,
		CAFile:             c.MQTTCAFile,
		CertFile:           c.MQTTClientCert,
		KeyFile:            c.MQTTClientKey,
		InsecureSkipVerify: c.MQTTInsecureSkipVerify,
		// A persistent session: commands published with QoS 1 while
		// spark2mqtt is away are queued by the broker and run when it is back.
		PersistentSession: c.MQTTClientID != "",
		Will:              will,
		OnConnect:         onConnect,
		Logger:            log.With("component", "mqtt"),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: external broker: %w", errConfig, err)
	}
	if err := xc.Start(); err != nil {
		return nil, fmt.Errorf("external broker: %w", err)
	}
	return &mqttBroker{client: xc, close: xc.Close}, nil
}
