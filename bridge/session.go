package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/spark2mqtt/spark2mqtt/coapdev"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// ErrTimeout is wrapped by a Device request that got no answer in time.
var ErrTimeout = errors.New("bridge: device did not answer in time")

// Handler returns the coapdev.Handler (also a coapdev.DescribeHandler, a
// coapdev.SubscribeHandler and a coapdev.QuickEventHandler) that feeds b
// from a coapdev.Server: pass it in coapdev.Config.Handler. Its methods do
// not block.
func (b *Bridge) Handler() coapdev.Handler { return sessionHandler{b} }

type sessionHandler struct{ b *Bridge }

func (h sessionHandler) SessionStarted(s *coapdev.Session) {
	h.b.DeviceOnline(NewDevice(s), InfoOf(s))
}

func (h sessionHandler) Event(s *coapdev.Session, e msg.Event) {
	// DeviceEvent without its checks: coapdev's ids are canonical, and
	// e.Data is the handler's to keep (coapdev.Handler).
	h.b.enqueueEvent(eventItem{from: s.IDString(), src: NewDevice(s), e: e})
}

// QuickEvents implements coapdev.QuickEventHandler: Event only queues (or
// drops the oldest queued event), so coapdev calls it on the session's read
// loop.
func (h sessionHandler) QuickEvents() {}

func (h sessionHandler) SessionEnded(s *coapdev.Session, err error) {
	h.b.DeviceOffline(NewDevice(s), err)
}

func (h sessionHandler) Described(s *coapdev.Session, d msg.Description) {
	h.b.DeviceDescribed(NewDevice(s), d)
}

// Subscribed implements coapdev.SubscribeHandler: it runs on the session's
// read loop and only updates the subscription index.
func (h sessionHandler) Subscribed(s *coapdev.Session, sub msg.Subscription) {
	h.b.DeviceSubscribed(NewDevice(s), sub.Prefix)
}

// NewDevice returns the Device of a coapdev session. Two calls for the same
// session return equal values.
func NewDevice(s *coapdev.Session) Device { return sessionDevice{s} }

// InfoOf returns what the session learnt about its device.
func InfoOf(s *coapdev.Session) DeviceInfo {
	i := s.Info()
	info := DeviceInfo{
		Kind:           i.Kind.String(),
		ProductID:      i.Hello.ProductID,
		ProductVersion: i.Hello.ProductVersion,
		PlatformID:     i.Hello.PlatformID,
		HasPlatform:    i.Hello.HasPlatform,
		ConnectedAt:    i.Connected,
		MaxArg:         s.Limits().Arg,
	}
	if r := s.Remote(); r != nil {
		info.Remote = r.String()
	}
	return info
}

// sessionDevice adapts *coapdev.Session to Device, mapping its errors.
type sessionDevice struct{ s *coapdev.Session }

func (d sessionDevice) ID() string { return d.s.IDString() }

func (d sessionDevice) Describe(ctx context.Context) (msg.Description, error) {
	desc, err := d.s.Describe(ctx)
	return desc, deviceErr(err)
}

func (d sessionDevice) Call(ctx context.Context, fn, arg string) (int32, error) {
	rv, err := d.s.Call(ctx, fn, arg)
	return rv, deviceErr(err)
}

func (d sessionDevice) Get(ctx context.Context, name string) (msg.Value, error) {
	v, err := d.s.Get(ctx, name)
	return v, deviceErr(err)
}

func (d sessionDevice) Send(ctx context.Context, e msg.Event) error {
	return deviceErr(d.s.Send(ctx, e))
}

func (d sessionDevice) Signal(ctx context.Context, on bool) error {
	return deviceErr(d.s.Signal(ctx, on))
}

func (d sessionDevice) Done() <-chan struct{} { return d.s.Done() }

// deviceErr maps coapdev's errors onto the ones Device documents.
func deviceErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, coapdev.ErrNotFound), errors.Is(err, coapdev.ErrNameTooLong):
		// A name over the device's limit cannot be one of its functions.
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, coapdev.ErrArgTooLong):
		return fmt.Errorf("%w: %w", ErrArgTooLong, err)
	case errors.Is(err, coapdev.ErrClosed):
		return fmt.Errorf("%w: %w", ErrGone, err)
	case errors.Is(err, coapdev.ErrTimeout):
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}
