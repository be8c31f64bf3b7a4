package devsim

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// fakeClock is a settable clock for the heater.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestHeater(t *testing.T, clock *fakeClock) *Heater {
	t.Helper()
	h, err := NewHeater(HeaterConfig{
		Device:   Config{Firmware: Photon08, DeviceID: testID, ServerKey: &serverKey(t).PublicKey},
		Interval: -1,
		Tau:      time.Minute,
		Noise:    -1,
		Now:      clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHeaterFunction(t *testing.T) {
	h := newTestHeater(t, &fakeClock{now: time.Unix(1e9, 0)})
	steps := []struct {
		arg    string
		want   int32
		wantOn bool
	}{
		{"on", 1, true},
		{"bogus", -1, true}, // anything else keeps the state
		{"", -1, true},
		{"off", 0, false},
		{"ON", -1, false},
		{"off", 0, false},
		{"on", 1, true},
	}
	for i, s := range steps {
		if got := h.call(context.Background(), s.arg); got != s.want {
			t.Errorf("step %d: heater(%q): got %d, want %d", i, s.arg, got, s.want)
		}
		if h.On() != s.wantOn {
			t.Errorf("step %d: On: got %v, want %v", i, h.On(), s.wantOn)
		}
		wantState := int32(0)
		if s.wantOn {
			wantState = 1
		}
		if got := h.state(); got != wantState {
			t.Errorf("step %d: state: got %d, want %d", i, got, wantState)
		}
	}
}

func TestHeaterDrift(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1e9, 0)}
	h := newTestHeater(t, clock)
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9 }
	if got := h.Temp(); got != heaterAmbient {
		t.Fatalf("initial: got %v, want %v", got, heaterAmbient)
	}
	clock.Add(time.Hour)
	if got := h.Temp(); got != heaterAmbient {
		t.Errorf("off, an hour later: got %v, want %v", got, heaterAmbient)
	}
	h.call(context.Background(), "on")
	clock.Add(time.Minute) // one time constant: 63 % of the way to 60
	want := heaterHot + (heaterAmbient-heaterHot)*math.Exp(-1)
	if got := h.Temp(); !near(got, want) {
		t.Errorf("on, after tau: got %v, want %v", got, want)
	}
	clock.Add(time.Hour)
	if got := h.Temp(); !near(got, heaterHot) {
		t.Errorf("on, long after: got %v, want %v", got, heaterHot)
	}
	h.call(context.Background(), "off")
	clock.Add(time.Minute)
	want = heaterAmbient + (heaterHot-heaterAmbient)*math.Exp(-1)
	if got := h.Temp(); !near(got, want) {
		t.Errorf("off, after tau: got %v, want %v", got, want)
	}
}

func TestHeaterNoise(t *testing.T) {
	h, err := NewHeater(HeaterConfig{
		Device: Config{Firmware: Core, ServerKey: &serverKey(t).PublicKey},
		Noise:  0.5, Seed: 1, Now: (&fakeClock{now: time.Unix(1e9, 0)}).Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[float64]bool{}
	for range 20 {
		v := h.Temp()
		if math.Abs(v-heaterAmbient) > 0.5 {
			t.Fatalf("reading %v: more than 0.5 from %v", v, heaterAmbient)
		}
		distinct[v] = true
	}
	if len(distinct) < 2 {
		t.Error("the noise does not vary")
	}
}

// TestHeaterDevice drives the heater over the protocol: the function, the
// variables, and the temperature events every Interval.
func TestHeaterDevice(t *testing.T) {
	for _, fw := range allFirmwares {
		t.Run(fw.String(), func(t *testing.T) {
			h, err := NewHeater(HeaterConfig{
				Device:   Config{Firmware: fw, DeviceID: testID, ServerKey: &serverKey(t).PublicKey, PingInterval: -1},
				Interval: 20 * time.Millisecond,
				Noise:    -1,
			})
			if err != nil {
				t.Fatal(err)
			}
			p := attachPeer(t, h.Device())
			p.connect(h.Device())
			// Temperature events arrive by themselves; collect three,
			// answering the requests in between.
			p.write(msg.NewFunctionCall(p.nextID(), p.nextTok(), "heater", []byte("on")))
			p.write(msg.NewVariableRequest(p.nextID(), p.nextTok(), "state"))
			p.write(msg.NewVariableRequest(p.nextID(), p.nextTok(), "temp"))
			var events, answers int
			var ret int32 = 99
			var state, temp *msg.Value
			for events < 3 || answers < 4 {
				m := p.read()
				switch {
				case m.Kind() == msg.KindEvent:
					e, err := msg.ParseEvent(m)
					if err != nil {
						t.Fatal(err)
					}
					if e.Name != "temperature" || e.TTL != 60 || e.Private {
						t.Errorf("event: got %+v, want public temperature TTL 60", e)
					}
					if v, err := strconv.ParseFloat(string(e.Data), 64); err != nil || v < heaterAmbient-1 || v > heaterHot {
						t.Errorf("event data %q: not a temperature (%v)", e.Data, err)
					}
					events++
				case m.Code == msg.Changed:
					ret, _ = msg.DecodeReturn(m.Payload)
					answers++
				case m.Code == msg.Content && len(m.Payload) == 4:
					v, _ := msg.DecodeValue(msg.VarInt, m.Payload)
					state = &v
					answers++
				case m.Code == msg.Content && len(m.Payload) == 8:
					v, _ := msg.DecodeValue(msg.VarDouble, m.Payload)
					temp = &v
					answers++
				case m.Kind() == msg.KindEmptyAck:
					answers++
				default:
					t.Fatalf("unexpected %+v", m)
				}
			}
			if ret != 1 || state == nil || state.Int != 1 || temp == nil || temp.Double < heaterAmbient-1 {
				t.Errorf("got return %d, state %v, temp %v; want 1, 1, about 20", ret, state, temp)
			}
			if !h.On() {
				t.Error("the heater is off")
			}
		})
	}
}

func TestHeaterConfigError(t *testing.T) {
	_, err := NewHeater(HeaterConfig{Device: Config{
		Firmware: Core, ServerKey: &serverKey(t).PublicKey,
		App: func(context.Context, *Device) {},
	}})
	if !errors.Is(err, ErrConfig) {
		t.Errorf("got %v, want ErrConfig", err)
	}
}
