package devsim

import (
	"bytes"
	"context"
	"crypto/aes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// decodeCoAP decodes a vector's coap_hex.
func decodeCoAP(t testing.TB, h string) msg.Message {
	t.Helper()
	m, err := msg.Decode(vectors.Hex(t, h))
	if err != nil {
		t.Fatalf("vector %s: %v", h, err)
	}
	return m
}

// describeMismatch decrypts a device frame that differs from the recorded
// one with the recorded IV, to say which message the device sent instead.
func describeMismatch(t testing.TB, key []byte, ivHex string, got []byte) string {
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	var iv [frame.BlockSize]byte
	copy(iv[:], vectors.Hex(t, ivHex))
	if len(got) < 2 {
		return "short frame"
	}
	p, err := frame.Open(block, &iv, append([]byte(nil), got[2:]...))
	if err != nil {
		return fmt.Sprintf("undecryptable with the recorded IV (%v): the device's earlier frames differ", err)
	}
	return fmt.Sprintf("device sent CoAP %x", p)
}

// TestPhotonFixtureReplay plays the server side of the recorded Photon
// sessions (same keys, the recorded nonce, 384-byte blob and server frames)
// against a simulated Photon of the same firmware running the recorded
// application (the heater), and requires every device frame to be the
// recorded one byte for byte: same CoAP, same order, same ids and tokens,
// hence the same ciphertext.
func TestPhotonFixtureReplay(t *testing.T) {
	tests := []struct {
		name string
		file string
		fw   Firmware
	}{
		{"photon07", "session_fixture_photon07.json", Photon07},
		{"photon08", "session_fixture_photon08.json", Photon08},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := loadSession(t, tc.file)
			var key struct {
				Key string `json:"aes_key"`
			}
			vectors.Load(t, tc.file, &key)
			serverPriv := parsePrivPEM(t, f.ServerPEM)

			// The recorded application: heater, temp, state, and the
			// values the recording read.
			var temp float64
			for _, fr := range f.Frames {
				if strings.Contains(fr.Description, `answering "Variable temp"`) {
					v, err := msg.DecodeValue(msg.VarDouble, decodeCoAP(t, fr.CoAP).Payload)
					if err != nil {
						t.Fatal(err)
					}
					temp = v.Double
				}
			}
			if temp == 0 {
				t.Fatal("no recorded temp value")
			}
			var (
				mu      sync.Mutex
				events  []msg.Event
				signals []bool
				calls   []string
			)
			cfg := Config{
				Firmware:  tc.fw,
				DeviceID:  parseID(t, f.DeviceID),
				DeviceKey: parsePrivDER(t, f.DevicePrivDER),
				ServerKey: &serverPriv.PublicKey,
				Functions: []Function{{Name: "heater", Call: func(_ context.Context, arg string) int32 {
					mu.Lock()
					defer mu.Unlock()
					calls = append(calls, arg)
					switch arg {
					case "on":
						return 1
					case "off":
						return 0
					}
					return -1
				}}},
				Variables: []Variable{
					{Name: "temp", Type: msg.VarDouble, Get: func() msg.Value { return msg.Value{Double: temp} }},
					{Name: "state", Type: msg.VarInt, Get: func() msg.Value { return msg.Value{Int: 0} }},
				},
				Subscriptions: []msg.Subscription{{Prefix: "heater/"}},
				OnEvent: func(e msg.Event) {
					mu.Lock()
					defer mu.Unlock()
					events = append(events, e)
				},
				OnSignal: func(on bool) {
					mu.Lock()
					defer mu.Unlock()
					signals = append(signals, on)
				},
				SystemMessages:      true,
				DescribeAtOnceEmpty: true,
				PingInterval:        -1, // the recorded idle ping is sent with Ping
			}
			d, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			srv, dev := net.Pipe()
			defer srv.Close()
			rn := run(t, d, dev)
			if err := srv.SetDeadline(time.Now().Add(testTimeout)); err != nil {
				t.Fatal(err)
			}

			// Handshake: the recorded nonce and blob; block 2 is random
			// (RSA padding) but must decrypt to the recorded plaintext.
			if _, err := srv.Write(vectors.Hex(t, f.Nonce)); err != nil {
				t.Fatal(err)
			}
			block2 := make([]byte, 256)
			if _, err := io.ReadFull(srv, block2); err != nil {
				t.Fatal(err)
			}
			id, offered, err := handshake.ParseBlock2(serverPriv, vectors.Hex(t, f.Nonce), block2)
			if err != nil {
				t.Fatalf("block 2: %v", err)
			}
			if id != cfg.DeviceID || !offered.Equal(&cfg.DeviceKey.PublicKey) {
				t.Fatalf("block 2: got id %v and key %v, want %v and the device key", id, offered, cfg.DeviceID)
			}
			if _, err := srv.Write(vectors.Hex(t, f.Blob)); err != nil {
				t.Fatal(err)
			}

			ctx := ctxT(t)
			pingErr := make(chan error, 1)
			pinged := false
			for i, fr := range f.Frames {
				want := vectors.Hex(t, fr.Frame)
				switch fr.Direction {
				case "server->device":
					if _, err := srv.Write(want); err != nil {
						t.Fatalf("frame %d: write: %v", i, err)
					}
					continue
				case "device->server":
				default:
					t.Fatalf("frame %d: direction %q", i, fr.Direction)
				}
				// Device frames the application or the keepalive
				// originates: trigger them.
				m := decodeCoAP(t, fr.CoAP)
				switch {
				case m.Kind() == msg.KindEvent && len(m.Path) > 1 && m.Path[1] == "temperature":
					if err := d.Publish(ctx, "temperature", m.Payload, 60, false); err != nil {
						t.Fatalf("frame %d: publish: %v", i, err)
					}
				case m.Kind() == msg.KindPing:
					pinged = true
					go func() { pingErr <- d.Ping(ctx) }()
				}
				got, err := readFrameRaw(srv)
				if err != nil {
					t.Fatalf("frame %d (%s): read: %v", i, fr.Description, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("frame %d (%s):\n got %x\nwant %x\n%s", i, fr.Description, got, want,
						describeMismatch(t, vectors.Hex(t, key.Key), fr.IV, got))
				}
			}
			if !pinged {
				t.Fatal("the fixture has no device ping")
			}
			if err := <-pingErr; err != nil {
				t.Fatalf("Ping: %v", err)
			}
			if err := rn.stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}

			mu.Lock()
			defer mu.Unlock()
			wantCalls := []string{"on", "off", "", "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"}
			if diff := cmp.Diff(wantCalls, calls); diff != "" {
				t.Errorf("function calls (-want +got):\n%s", diff)
			}
			wantEvents := []msg.Event{{Name: "heater/cmd", Data: []byte("on"), TTL: 60}}
			if diff := cmp.Diff(wantEvents, events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]bool{true, false}, signals); diff != "" {
				t.Errorf("signals (-want +got):\n%s", diff)
			}
			st := d.Stats()
			if st.ServerTime.IsZero() {
				t.Error("the GetTime answer was not recorded")
			}
		})
	}
}
