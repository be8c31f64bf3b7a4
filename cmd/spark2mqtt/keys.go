package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// Files in the data dir.
const (
	serverKeyFile  = "server_key.pem"      // RSA-2048 private key (PKCS#1 PEM); created on first start
	serverDERFile  = "server_key.der"      // the 294-byte public key a device is flashed with
	serverBlobFile = "server_key_blob.bin" // DER, padding to 384, then the 128-byte server address block
	deviceKeysDir  = "device_keys"         // <id>.pub.pem per device, as the reference cloud keeps them
	devicesFile    = "devices.yaml"        // names and Home Assistant entities
)

func serverKeyPath(dataDir string) string  { return filepath.Join(dataDir, serverKeyFile) }
func deviceKeysPath(dataDir string) string { return filepath.Join(dataDir, deviceKeysDir) }

// runKeys implements `spark2mqtt keys server|add|accept|remove|list`.
func runKeys(args []string, stdout, stderr io.Writer) error {
	c, err := loadConfig()
	if err != nil {
		return err
	}
	usage := func() error {
		fmt.Fprint(stderr, `usage:
  spark2mqtt keys server [--host HOST] [--port PORT]
        print where the server key is; write the DER key and the key+address blob a device is flashed with
  spark2mqtt keys add ID FILE     register a device public key (PEM or DER)
  spark2mqtt keys accept ID       trust the key a Photon offered in a refused handshake
  spark2mqtt keys remove ID       forget a device key
  spark2mqtt keys list            list registered devices and keys waiting for acceptance
`)
		return fmt.Errorf("%w: keys: missing or unknown subcommand", errUsage)
	}
	if len(args) == 0 {
		return usage()
	}
	store := func() (*keys.Store, error) {
		mode, err := keys.ParseMode(c.KeyMode)
		if err != nil {
			return nil, err
		}
		return keys.OpenStore(deviceKeysPath(c.DataDir), mode)
	}
	switch args[0] {
	case "server":
		fs := flag.NewFlagSet("keys server", flag.ContinueOnError)
		fs.SetOutput(stderr)
		host := fs.String("host", "", "address the devices will connect to (IPv4 or domain name, up to 64 characters); empty writes no blob")
		port := fs.Uint("port", 5683, "TCP port the devices will connect to")
		if err := fs.Parse(args[1:]); err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		return keysServer(c.DataDir, *host, *port, stdout)
	case "add":
		if len(args) != 3 {
			return usage()
		}
		id, err := keys.ParseDeviceID(args[1])
		if err != nil {
			return err
		}
		b, err := os.ReadFile(args[2])
		if err != nil {
			return fmt.Errorf("keys add: %w", err)
		}
		pub, err := keys.ParsePublicKey(b)
		if err != nil {
			return fmt.Errorf("keys add: %s: %w", args[2], err)
		}
		s, err := store()
		if err != nil {
			return err
		}
		if err := s.Add(id, pub); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "registered %s in %s\n", id, s.Dir())
		return nil
	case "accept", "remove":
		if len(args) != 2 {
			return usage()
		}
		id, err := keys.ParseDeviceID(args[1])
		if err != nil {
			return err
		}
		s, err := store()
		if err != nil {
			return err
		}
		if args[0] == "accept" {
			err = s.Accept(id)
		} else {
			err = s.Remove(id)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s done\n", id, args[0])
		return nil
	case "list":
		s, err := store()
		if err != nil {
			return err
		}
		entries, err := s.List()
		if err != nil {
			return err
		}
		for _, e := range entries {
			state := "registered"
			if e.Pending {
				state = "waiting: spark2mqtt keys accept " + e.ID.String()
			}
			fmt.Fprintf(stdout, "%s\t%s\n", e.ID, state)
		}
		return nil
	}
	return usage()
}

// keysServer makes sure the server key exists and writes the forms a device
// is flashed with next to it.
func keysServer(dataDir, host string, port uint, stdout io.Writer) error {
	if port == 0 || port > 65535 {
		return fmt.Errorf("%w: keys server: port %d out of range", errUsage, port)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	priv, created, err := keys.LoadOrCreateServerKey(serverKeyPath(dataDir))
	if err != nil {
		return err
	}
	der, err := keys.PublicDER(&priv.PublicKey)
	if err != nil {
		return err
	}
	derPath := filepath.Join(dataDir, serverDERFile)
	if err := os.WriteFile(derPath, der, 0o644); err != nil {
		return err
	}
	verb := "loaded"
	if created {
		verb = "created"
	}
	fmt.Fprintf(stdout, "server key (%s): %s\n", verb, serverKeyPath(dataDir))
	fmt.Fprintf(stdout, "public key for the device (294-byte DER): %s\n", derPath)
	if host == "" {
		fmt.Fprintln(stdout, "add --host HOST to also write the key+address blob for a device")
		return nil
	}
	blob, err := keys.ServerKeyBlob(&priv.PublicKey, host, uint16(port))
	if err != nil {
		return fmt.Errorf("keys server: %w", err)
	}
	blobPath := filepath.Join(dataDir, serverBlobFile)
	if err := os.WriteFile(blobPath, blob, 0o644); err != nil {
		return err
	}
	kind := "domain name"
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		kind = "IPv4 address"
	}
	fmt.Fprintf(stdout, "key + server address blob (%d bytes, %s %s, port %s): %s\n", len(blob), kind, host, strconv.Itoa(int(port)), blobPath)
	return nil
}

// errUsage marks command-line mistakes; main exits with status 2 on them.
var errUsage = errors.New("usage")
