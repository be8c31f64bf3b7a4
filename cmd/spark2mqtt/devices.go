package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/bridge"
	"github.com/spark2mqtt/spark2mqtt/bridge/hass"
	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/broker/external"
)

// devicesTimeout bounds `spark2mqtt devices remove` from the connect to the
// answer.
const devicesTimeout = 15 * time.Second

// runDevices implements `spark2mqtt devices ...`.
func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprint(stdout, `spark2mqtt devices remove ID|NAME

  Removes the device from Home Assistant: asks the running spark2mqtt, over
  MQTT (SPARK2MQTT_BASE_TOPIC/ID/remove), to publish an empty retained
  discovery config, and waits until it has. The device comes back when it
  connects again; set "discovery: false" in its devices file entry, or remove
  its key, to keep it out.

  It reaches the broker with the same SPARK2MQTT_* settings as serve: the
  external broker of SPARK2MQTT_MQTT_URL, else the embedded one on
  SPARK2MQTT_MQTT_LISTEN (on this machine). With a users file it logs in as
  SPARK2MQTT_MQTT_USERNAME, who needs to write SPARK2MQTT_BASE_TOPIC/+/remove.
`)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage()
		return nil
	}
	if args[0] != "remove" {
		return fmt.Errorf("%w: devices: unknown command %q (spark2mqtt devices --help)", errUsage, args[0])
	}
	fs := flag.NewFlagSet("devices remove", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usage
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: devices remove takes one device id or name", errUsage)
	}
	c, err := loadConfig()
	if err != nil {
		return err
	}
	if !c.HADiscovery {
		return fmt.Errorf("%w: Home Assistant discovery is off (SPARK2MQTT_HA_DISCOVERY=false): nothing to remove", errConfig)
	}
	ctx, cancel := context.WithTimeout(ctx, devicesTimeout)
	defer cancel()
	cl, err := cliClient(ctx, c)
	if err != nil {
		return err
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		_ = cl.Close(cctx)
	}()
	id, err := resolveDevice(ctx, cl, c.BaseTopic, fs.Arg(0))
	if err != nil {
		return err
	}
	if err := removeDevice(ctx, cl, c, id); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed %s from Home Assistant (%s)\n", id, hass.ConfigTopic(c.HAPrefix, id))
	return nil
}

// cliClient connects to the broker serve uses.
func cliClient(ctx context.Context, c config) (broker.Client, error) {
	cfg := external.Config{
		URL:                c.MQTTURL,
		Username:           c.MQTTUsername,
		Password:           c.MQTTPassword,
		CAFile:             c.MQTTCAFile,
		CertFile:           c.MQTTClientCert,
		KeyFile:            c.MQTTClientKey,
		InsecureSkipVerify: c.MQTTInsecureSkipVerify,
	}
	if c.MQTTURL == "" {
		addr, err := loopbackAddr(c.MQTTListen)
		if err != nil {
			return nil, err
		}
		cfg.URL = "tcp://" + addr
	}
	cl, err := external.Connect(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the broker at %s: %w", cfg.URL, err)
	}
	return cl, nil
}

// loopbackAddr turns a listen address (":1883", "0.0.0.0:1883") into the
// address to reach it on this machine.
func loopbackAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		return "", fmt.Errorf("%w: SPARK2MQTT_MQTT_LISTEN=%q: not an address with a port to connect to", errConfig, listen)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// resolveDevice turns an id or a name into a device id, reading the
// bridge's inventory for names.
func resolveDevice(ctx context.Context, cl broker.Client, base, arg string) (string, error) {
	if id, ok := parseDeviceID(arg); ok {
		return id, nil
	}
	got := make(chan []byte, 1)
	unsub, err := cl.Subscribe(ctx, base+"/bridge/devices", 1, func(m broker.Message) {
		select {
		case got <- append([]byte(nil), m.Payload...):
		default:
		}
	})
	if err != nil {
		return "", fmt.Errorf("read the device list: %w", err)
	}
	defer func() { _ = unsub(context.WithoutCancel(ctx)) }()
	select {
	case p := <-got:
		var list []bridge.InventoryDevice
		if err := json.Unmarshal(p, &list); err != nil {
			return "", fmt.Errorf("read the device list: %w", err)
		}
		for _, d := range list {
			if d.Name == arg {
				return d.ID, nil
			}
		}
		return "", fmt.Errorf("%w: no device is named %q (spark2mqtt knows %d devices; give the 24-hex-digit id)", errUsage, arg, len(list))
	case <-ctx.Done():
		return "", fmt.Errorf("%w: %q is not a device id, and %s/bridge/devices did not arrive: is spark2mqtt running?", errUsage, arg, base)
	}
}

// parseDeviceID accepts 24 hex digits in any case.
func parseDeviceID(s string) (string, bool) {
	if len(s) != 24 {
		return "", false
	}
	for _, r := range strings.ToLower(s) {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return "", false
		}
	}
	return strings.ToLower(s), true
}

// removeDevice asks the bridge to remove device id and waits until the
// empty config is published.
func removeDevice(ctx context.Context, cl broker.Client, c config, id string) error {
	topic := hass.ConfigTopic(c.HAPrefix, id)
	removed := make(chan struct{}, 1)
	unsub, err := cl.Subscribe(ctx, topic, 1, func(m broker.Message) {
		if len(m.Payload) == 0 { // the removal (a retained empty message is never replayed)
			select {
			case removed <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", topic, err)
	}
	defer func() { _ = unsub(context.WithoutCancel(ctx)) }()
	req := c.BaseTopic + "/" + id + "/remove"
	if err := cl.Publish(ctx, broker.Message{Topic: req, QoS: 1}); err != nil {
		return fmt.Errorf("publish %s: %w", req, err)
	}
	select {
	case <-removed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("no answer on %s within %v: is spark2mqtt running, with discovery on, and may this user write %s?", topic, devicesTimeout, req)
	}
}
