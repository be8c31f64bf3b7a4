package bridge

import (
	"context"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// stubDevice is a Device for benchmarks of the hand-off paths only.
type stubDevice struct{ id string }

func (d *stubDevice) ID() string { return d.id }
func (d *stubDevice) Describe(context.Context) (msg.Description, error) {
	return msg.Description{}, nil
}
func (d *stubDevice) Call(context.Context, string, string) (int32, error) {
	return 0, nil
}
func (d *stubDevice) Get(context.Context, string) (msg.Value, error) { return msg.Value{}, nil }
func (d *stubDevice) Send(context.Context, msg.Event) error          { return nil }
func (d *stubDevice) Subscribed(string) bool                         { return false }
func (d *stubDevice) Signal(context.Context, bool) error             { return nil }
func (d *stubDevice) Done() <-chan struct{}                          { return nil }

// BenchmarkDeviceEventHandoff: the cost of DeviceEvent, which runs on
// coapdev's delivery goroutine (it must keep up with the device).
func BenchmarkDeviceEventHandoff(b *testing.B) {
	br, err := New(Config{Client: nopClient{}, EventQueue: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	d := &stubDevice{id: "746573740000000000000001"}
	e := msg.Event{Name: "temperature", Data: []byte("48.5"), TTL: 60}
	b.ReportAllocs()
	for b.Loop() {
		br.DeviceEvent(d, e)
		select {
		case <-br.events:
		default:
		}
	}
}
