// Package broker is the contract between spark2mqtt and an MQTT broker: one
// small Client interface, the Message it carries and the errors it returns.
//
// Two implementations exist: broker/embedded runs a mochi-mqtt broker inside
// the process and talks to it through an inline client; broker/external is a
// paho client of a broker the user runs (Mosquitto, EMQX, ...). The conformance
// suite in broker/brokertest holds both to the same behaviour. This package
// imports nothing outside the standard library, so the bridge can depend on it
// without knowing which broker it talks to.
//
// Concurrency: a Client is safe for concurrent use. Handlers are called from
// the implementation's delivery goroutine and must not block (see Handler).
package broker

import (
	"context"
	"errors"
)

// Message is one MQTT application message, inbound or outbound.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool

	// ResponseTopic and CorrelationData are the MQTT 5 request/response
	// properties. They are empty where the transport cannot carry them
	// (MQTT 3.1.1 clients); publishers set them and receivers read them where
	// they exist.
	ResponseTopic   string
	CorrelationData []byte
}

// Handler receives the messages of one subscription. It must not block: copy
// what it needs, hand the work to a goroutine of its own or a bounded queue,
// and return. Implementations call it from a bounded hand-off queue, so a slow
// handler costs its own subscription messages (counted as dropped) rather than
// stalling the broker, but it must still never wait on the Client it was
// registered with.
type Handler func(Message)

// Client is a connection to an MQTT broker. It is safe for concurrent use.
type Client interface {
	// Publish sends m. For QoS 0 it returns once the message is handed to the
	// transport; for QoS 1 once the broker has it or, when the broker is away,
	// once it is buffered for delivery after the reconnect (ErrBufferFull when
	// that buffer is full). It returns ErrInvalidTopic for an empty topic or
	// one with a wildcard, ErrTooLarge for a message over the broker's maximum
	// packet size, and ErrClosed after Close.
	Publish(ctx context.Context, m Message) error

	// Subscribe registers h for messages matching filter (MQTT wildcards
	// allowed) at the given QoS. The subscription stays active across
	// reconnects until the returned unsubscribe is called or the Client is
	// closed. Retained messages matching filter are delivered to h.
	Subscribe(ctx context.Context, filter string, qos byte, h Handler) (unsubscribe func(context.Context) error, err error)

	// Close ends the connection and waits for the client's goroutines. A clean
	// Close does not trigger the will. It is idempotent.
	Close(ctx context.Context) error
}

// Readiness is implemented by clients whose connection can be down while the
// Client is still usable (the external client reconnecting). Ready reports
// whether the broker is reachable now.
type Readiness interface {
	Ready() bool
}

var (
	// ErrClosed is returned by a Client that has been closed.
	ErrClosed = errors.New("broker: client closed")
	// ErrInvalidTopic is returned for a publish topic that is empty, contains
	// a wildcard (+ or #) or a NUL, or for an invalid subscription filter.
	ErrInvalidTopic = errors.New("broker: invalid topic")
	// ErrTooLarge is returned for a message over the broker's maximum packet size.
	ErrTooLarge = errors.New("broker: message too large")
	// ErrBufferFull is returned when a QoS 1 message cannot be buffered while
	// the broker is unreachable.
	ErrBufferFull = errors.New("broker: offline buffer full")
	// ErrNotConnected is returned for an operation that needs the broker now
	// (e.g. a QoS 0 publish) while it is unreachable.
	ErrNotConnected = errors.New("broker: not connected")
)
