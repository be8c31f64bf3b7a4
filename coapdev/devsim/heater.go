package devsim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// The heater's temperatures, °C: it drifts towards heaterHot when on and
// towards heaterAmbient when off.
const (
	heaterAmbient = 20.0
	heaterHot     = 60.0
)

// Heater defaults.
const (
	DefaultHeaterInterval = 30 * time.Second
	DefaultHeaterTau      = 2 * time.Minute
	DefaultHeaterNoise    = 0.05
)

// HeaterConfig configures the mission's water heater.
type HeaterConfig struct {
	// Device is the device the heater runs on. NewHeater appends the
	// function heater and the variables temp and state to its Functions
	// and Variables and sets its App; App must be nil.
	Device Config
	// Interval is the period of the "temperature" event (default 30 s;
	// negative: no events).
	Interval time.Duration
	// Initial is the starting temperature (default 20 °C).
	Initial float64
	// Tau is the time constant of the drift (default 2 min): after Tau the
	// temperature has covered 63 % of the way to its target.
	Tau time.Duration
	// Noise is the amplitude of a uniform noise added to each reading, °C
	// (default 0.05; negative: none). Seed seeds it.
	Noise float64
	Seed  uint64
	// Now is the heater's clock (default time.Now), for tests.
	Now func() time.Time
}

// Heater is the mission's simulated water heater: a device with
//   - the function "heater": "on" → 1 and "off" → 0 switch it, anything
//     else → -1 and keeps the state;
//   - the variables "temp" (double: drifting towards 60 °C when on, 20 °C
//     when off, with a little noise) and "state" (int 0/1);
//   - the event "temperature" every Interval, data = the temperature with
//     one decimal, e.g. "48.5".
//
// Its methods are safe for concurrent use.
type Heater struct {
	dev      *Device
	interval time.Duration
	tau      float64 // seconds
	noise    float64
	now      func() time.Time

	mu sync.Mutex
	// Guarded by mu.
	on   bool
	temp float64
	last time.Time
	rnd  *rand.Rand
}

// NewHeater returns a Heater on a new Device. Errors: ErrConfig, or New's.
func NewHeater(cfg HeaterConfig) (*Heater, error) {
	if cfg.Device.App != nil {
		return nil, fmt.Errorf("%w: heater: Device.App is set by the heater", ErrConfig)
	}
	h := &Heater{
		interval: cfg.Interval,
		tau:      cfg.Tau.Seconds(),
		noise:    cfg.Noise,
		now:      cfg.Now,
		temp:     cfg.Initial,
		rnd:      rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
	}
	if h.interval == 0 {
		h.interval = DefaultHeaterInterval
	}
	if h.tau <= 0 {
		h.tau = DefaultHeaterTau.Seconds()
	}
	if h.noise == 0 {
		h.noise = DefaultHeaterNoise
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.temp == 0 {
		h.temp = heaterAmbient
	}
	h.last = h.now()
	dc := cfg.Device
	dc.Functions = append(dc.Functions[:len(dc.Functions):len(dc.Functions)], Function{Name: "heater", Call: h.call})
	dc.Variables = append(dc.Variables[:len(dc.Variables):len(dc.Variables)],
		Variable{Name: "temp", Type: msg.VarDouble, Get: func() msg.Value { return msg.Value{Type: msg.VarDouble, Double: h.Temp()} }},
		Variable{Name: "state", Type: msg.VarInt, Get: func() msg.Value { return msg.Value{Type: msg.VarInt, Int: h.state()} }},
	)
	dc.App = h.app
	d, err := New(dc)
	if err != nil {
		return nil, err
	}
	h.dev = d
	return h, nil
}

// Device returns the heater's device, to Run or Dial.
func (h *Heater) Device() *Device { return h.dev }

// On reports whether the heater is on.
func (h *Heater) On() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.on
}

// Temp returns the current temperature reading (with noise).
func (h *Heater) Temp() float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.advance()
	t := h.temp
	if h.noise > 0 {
		t += (h.rnd.Float64()*2 - 1) * h.noise
	}
	return t
}

// call is the function "heater".
func (h *Heater) call(_ context.Context, arg string) int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.advance() // the drift so far was towards the old target
	switch arg {
	case "on":
		h.on = true
		return 1
	case "off":
		h.on = false
		return 0
	}
	return -1
}

func (h *Heater) state() int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.on {
		return 1
	}
	return 0
}

// advance moves the temperature to now: an exponential approach to the
// target. Called with mu held.
func (h *Heater) advance() {
	now := h.now()
	dt := now.Sub(h.last).Seconds()
	if dt <= 0 {
		return
	}
	target := heaterAmbient
	if h.on {
		target = heaterHot
	}
	h.temp = target + (h.temp-target)*math.Exp(-dt/h.tau)
	h.last = now
}

// app is the heater's application loop: it publishes "temperature" every
// interval until ctx ends. A refused event (rate limit) is skipped.
func (h *Heater) app(ctx context.Context, d *Device) {
	if h.interval < 0 {
		return
	}
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data := strconv.AppendFloat(nil, h.Temp(), 'f', 1, 64)
		if err := d.Publish(ctx, "temperature", data, 60, false); err != nil &&
			!errors.Is(err, ErrRateLimited) {
			return // the connection ended
		}
	}
}
