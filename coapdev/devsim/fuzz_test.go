package devsim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// FuzzHandle feeds arbitrary decrypted frames to a connected device's
// message handler, on every firmware, and asserts: no panic; a failure is
// one of the device's typed reasons to drop the connection; everything the
// device answers is CoAP the server can decode (or the firmware's bare
// payload marker, which is decodable once the marker is dropped); ids of
// new device messages count up by one.
func FuzzHandle(f *testing.F) {
	var cm struct {
		Vectors []struct {
			Direction string `json:"direction"`
			CoAP      string `json:"coap_hex"`
		} `json:"vectors"`
	}
	vectors.Load(f, "coap_messages.json", &cm)
	for _, v := range cm.Vectors {
		if v.Direction == "server->device" {
			f.Add(vectors.Hex(f, v.CoAP))
		}
	}
	for _, name := range []string{"session_fixture_photon07.json", "session_fixture_photon08.json", "session_fixture_core.json"} {
		s := loadSession(f, name)
		for _, fr := range s.Frames {
			if fr.Direction == "server->device" {
				f.Add(vectors.Hex(f, fr.CoAP))
			}
		}
	}
	f.Add([]byte{0})
	// Requests whose id is the device's next one: the ACK echoing it must
	// not be counted as a new id (a failure the fuzzer once found).
	for _, m := range []msg.Message{
		msg.NewFunctionCall(1, 1, "heater", []byte("on")),
		msg.NewPing(1),
		msg.NewVariableRequest(1, 2, "temp"),
	} {
		b, err := m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x41, 0x02, 0x12, 0x34, 0x01, 0xb1, 'f'}) // FunctionCall without a name
	f.Add([]byte{0x40, 0x03, 0x12, 0x34, 0xb1, 's'})       // Signal without token or query

	fns, vars := heaterApp()
	devs := make([]*Device, 0, len(allFirmwares))
	for _, fw := range allFirmwares {
		d, err := New(Config{
			Firmware: fw, ServerKey: &serverKey(f).PublicKey, Functions: fns, Variables: vars,
			Subscriptions: []msg.Subscription{{Prefix: ""}},
			OnEvent:       func(msg.Event) {}, OnSignal: func(bool) {},
		})
		if err != nil {
			f.Fatal(err)
		}
		devs = append(devs, d)
	}
	// The link needs a conn only for its address; nothing is written.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, d := range devs {
			ctx, cancel := context.WithCancel(context.Background())
			l := newLink(d, a, &handshake.Session{})
			l.ctx = ctx
			l.out = make(chan []byte, 64)
			l.up, l.appStarted = true, true
			l.subs = d.subs
			if len(p) >= 4 {
				// New device ids start half the id space away from the
				// request's, so an ACK echoing the request's id is never
				// mistaken for one that uses up a new id.
				l.nextID = binary.BigEndian.Uint16(p[2:4]) + 0x8000
			}
			start := l.nextID
			err := l.handle(bytes.Clone(p))
			cancel()
			if err != nil && !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrArgTooLong) && !errors.Is(err, ErrErrorAck) {
				t.Fatalf("%v: untyped error %v", d.Firmware(), err)
			}
			close(l.out)
			id := start
			for b := range l.out {
				m, derr := msg.Decode(b)
				if derr != nil && len(b) > 0 && b[len(b)-1] == 0xff {
					m, derr = msg.Decode(b[:len(b)-1])
				}
				if derr != nil {
					t.Fatalf("%v: answer %x does not decode: %v", d.Firmware(), b, derr)
				}
				if m.Type == msg.NonConfirmable || m.Type == msg.Confirmable || (m.Type == msg.Acknowledgement && m.ID == id+1 && d.q.ackUsesID) {
					id++
					if m.ID != id {
						t.Fatalf("%v: id %#04x, want %#04x", d.Firmware(), m.ID, id)
					}
				}
			}
		}
	})
}
