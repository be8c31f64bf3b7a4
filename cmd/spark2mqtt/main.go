// Command spark2mqtt is a self-hosted cloud for Spark Cores and Photons that
// puts their functions, variables and events on MQTT.
//
//	spark2mqtt [serve]        run the device server and the MQTT bridge (default)
//	spark2mqtt keys ...       server key export and device key registration
//	spark2mqtt simulate ...   run simulated devices against a server
//	spark2mqtt devices ...    remove a device from Home Assistant
//	spark2mqtt password       hash a password for the embedded broker's users file
//	spark2mqtt version        print the version
//
// Configuration comes from SPARK2MQTT_* environment variables, listed by
// `spark2mqtt serve --help`.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spark2mqtt/spark2mqtt/broker/embedded"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches the subcommand and returns the process exit status: 0 on
// success, 2 for usage and configuration errors, 1 otherwise.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "serve" || args[0] == "keys" || args[0] == "simulate" || args[0] == "version" || args[0] == "password" || args[0] == "devices" ||
		args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = runServeCommand(args, stdout, stderr)
	case "keys":
		err = runKeys(args, stdout, stderr)
	case "simulate":
		err = withSignals(func(ctx context.Context) error { return runSimulate(ctx, args, stdout, stderr) })
	case "devices":
		err = withSignals(func(ctx context.Context) error { return runDevices(ctx, args, stdout, stderr) })
	case "version":
		fmt.Fprintln(stdout, "spark2mqtt", version)
	case "password":
		err = runPassword(os.Stdin, stdout)
	default:
		fmt.Fprint(stdout, `spark2mqtt: a self-hosted Spark cloud on MQTT

  spark2mqtt [serve] [--help]   run the device server and the MQTT bridge
  spark2mqtt keys ...           server key export and device key registration
  spark2mqtt simulate ...       run simulated devices (spark2mqtt simulate --help)
  spark2mqtt devices remove ID  remove a device from Home Assistant (spark2mqtt devices --help)
  spark2mqtt password           read a password on stdin, print its bcrypt hash for the users file
  spark2mqtt version            print the version
`)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, errConfig):
		fmt.Fprintln(stderr, "spark2mqtt:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "spark2mqtt:", err)
		return 1
	}
}

// runPassword reads one line (the password) from in and prints its bcrypt
// hash, as the embedded broker's users file wants it.
func runPassword(in io.Reader, stdout io.Writer) error {
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return fmt.Errorf("%w: password: give the password on standard input", errUsage)
	}
	h, err := embedded.HashPassword(pw)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, h)
	return nil
}

// withSignals runs f with a context cancelled by the first SIGINT or SIGTERM;
// a second signal exits the process at once.
func withSignals(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	done := make(chan struct{})
	defer close(done)
	// Owned by withSignals: ends when f returns (done is closed).
	go func() {
		select {
		case <-sig:
			cancel()
		case <-done:
			return
		}
		select {
		case <-sig:
			fmt.Fprintln(os.Stderr, "spark2mqtt: second signal, exiting now")
			os.Exit(1)
		case <-done:
		}
	}()
	return f(ctx)
}
