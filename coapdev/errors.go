package coapdev

import (
	"errors"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

var (
	// ErrTimeout is returned by a request that got no answer within its
	// timeout (Config.RequestTimeout or Config.DescribeTimeout). The token
	// is quarantined, so a late answer is dropped and counted.
	ErrTimeout = errors.New("coapdev: request timed out")

	// ErrNotFound is returned by Call and Get for a function or variable
	// that is missing from the device's description, after one new
	// Describe made for the request (spark-protocol.md §2.4).
	ErrNotFound = errors.New("coapdev: no such function or variable")

	// ErrNameTooLong is returned, before anything is sent, for a function,
	// variable or event name over the device's limit (see Limits).
	ErrNameTooLong = errors.New("coapdev: name too long for the device")

	// ErrArgTooLong is returned, before anything is sent, for a function
	// argument over the device's limit (see Limits). A Photon runs the
	// function with the previous argument instead (spark-protocol.md §4.4).
	ErrArgTooLong = errors.New("coapdev: function argument too long for the device")

	// ErrDataTooLong is returned by Send, before anything is sent, for event
	// data over the device's limit (see Limits).
	ErrDataTooLong = errors.New("coapdev: event data too long for the device")

	// ErrTooLarge is returned for a message that would not fit in one frame
	// the device accepts (640 bytes of ciphertext, spark-protocol.md §3).
	ErrTooLarge = errors.New("coapdev: message too large for the device")

	// ErrNotSubscribed is returned by Send for an event no Subscribe of the
	// device matches; nothing is sent.
	ErrNotSubscribed = errors.New("coapdev: device is not subscribed to the event")

	// ErrBusy is returned when all 255 request tokens of a session are in
	// use or quarantined.
	ErrBusy = errors.New("coapdev: too many requests in flight")

	// ErrReset is returned when the device answered a request with a CoAP
	// Reset (spark-protocol.md §4.3).
	ErrReset = errors.New("coapdev: device reset the request")

	// ErrClosed is returned by requests on a session that has ended. The
	// error also wraps the session's *SessionError.
	ErrClosed = errors.New("coapdev: session closed")

	// ErrServerClosed is returned by Serve when it is called a second time.
	ErrServerClosed = errors.New("coapdev: server already served")
)

// SessionError is the end of a session or of a handshake: the typed reason
// and the error that caused it, if any (nil for Replaced, Shutdown and
// Closed). Session.Err and Handler.SessionEnded return it.
type SessionError struct {
	Reason CloseReason
	Err    error
}

// Error returns "coapdev: session ended: <reason>[: <cause>]".
func (e *SessionError) Error() string {
	if e.Err == nil {
		return "coapdev: session ended: " + e.Reason.String()
	}
	return "coapdev: session ended: " + e.Reason.String() + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *SessionError) Unwrap() error { return e.Err }

// ResponseError is a CoAP error code the device answered a request with,
// e.g. 4.00 or 5.03 (spark-protocol.md §4.5). Compare with errors.As.
type ResponseError struct {
	Code msg.Code
}

// Error returns "coapdev: device answered 4.04".
func (e *ResponseError) Error() string {
	return "coapdev: device answered " + e.Code.String()
}
