// Package external is the broker.Client for an MQTT broker the user runs
// (Mosquitto, EMQX, HiveMQ, ...), built on paho.mqtt.golang v1 (MQTT 3.1.1).
//
// It owns one logical connection to that broker: connecting and
// reconnecting, restoring subscriptions, buffering QoS 1 messages while the
// broker is away, and handing incoming messages to handlers without ever
// blocking paho. It does not own topics or payloads (the bridge does) nor the
// broker's configuration.
//
// # Connection
//
// New validates the Config (URL, TLS files, will) and Start runs one
// goroutine that connects, serves the connection until it is lost and
// connects again, with a delay that doubles from ReconnectMin to ReconnectMax
// (with jitter) while attempts fail. Each failed attempt is one log line with
// the address, the error, its class (reason: unreachable, tls,
// bad_credentials, not_authorized, refused, handshake) and the delay before
// the next try; wrong credentials and TLS failures are logged at Error level
// because an operator must fix them. Ready and WaitReady tell whether the
// client is connected with its subscriptions restored.
//
// paho's own reconnection (AutoReconnect, ConnectRetry, ResumeSubs) is off:
// every connection is a fresh paho client, dialled by our own dialer (with
// the Close context, so Close aborts an attempt at once), and paho's
// protocol version is pinned to 3.1.1 so that a refused CONNECT is not
// retried as MQTT 3.1 (which would hide "bad user name or password" behind
// "unacceptable protocol version").
//
// # Subscriptions
//
// The client keeps its own registry of subscriptions and sends all of them
// after every connect, before Ready reports true. This works whatever the
// broker remembers: a broker restarted without persistence, a clean session,
// or a persistent session (Config.PersistentSession), where re-subscribing
// is harmless (the broker re-sends the retained messages, which handlers see
// with Retain set). Relying on the broker's session alone would silently
// lose every subscription the first time the broker loses its state. With a
// persistent session, a filter unsubscribed while the broker was away is
// unsubscribed at the next connect, so the broker stops queueing for it.
//
// paho's router calls our one default handler on its goroutine, in order
// (OrderMatters stays true). That handler acknowledges the message, then
// only matches the topic against the registry and offers the message to
// each matching subscription's bounded queue with a non-blocking send; one
// goroutine per subscription calls the Handler. Acknowledging before the
// hand-off rather than after it (where paho would) lets the woken delivery
// goroutine run before the acknowledgement is written, as an inline handler
// would. A slow handler fills its own queue and its messages are dropped
// and counted (Stats.Dropped, a rate-limited warning); it never stalls paho,
// the other subscriptions or the acknowledgements, and order is kept within
// each subscription. This is the "equivalent" of SetOrderMatters(false) that
// the design asks for, without paho's goroutine per message and its loss of
// order. No code of ours ever waits on a paho token on paho's goroutine.
//
// # Offline buffer and its overflow policy
//
// A QoS 1 (or 2) Publish while the broker is away is appended to a bounded
// buffer (Config.BufferSize) and Publish returns nil: that nil is a promise
// that the message will be sent after the reconnect, at least once, in
// publish order. When a connection fails, the buffered messages it had in
// flight go back to the front of the buffer, and a message whose direct
// Publish was waiting for its PUBACK goes to the back (that Publish had not
// returned, so it has no order relative to what was buffered meanwhile) and
// its Publish returns nil. That Publish watches the connection's end as
// well as paho's token: with a persistent session paho never completes the
// tokens of a lost connection. After each connect, once the subscriptions are
// restored, the buffer is sent oldest first; new publishes queue behind it
// until it is empty, so a newer value never overtakes an older one.
//
// When the buffer is full, Publish refuses the new message with
// broker.ErrBufferFull (counted in Stats.BufferFull, logged at most every
// 10 s). It does not drop the oldest: every nil already returned stays a
// kept promise, and the caller learns synchronously that this message was
// not taken. That is what a bridge wants: its retained state (values,
// availability, results) is also held by the bridge, which republishes it
// from OnConnect, and a refused event is the caller's to count. One
// exception keeps the buffer from filling with stale state: a retained
// message replaces a buffered retained message for the same topic (the
// broker would keep only the last one anyway), so a long outage with values
// polled every few seconds costs one slot per topic (Stats.Coalesced). QoS 0
// is never buffered: without a connection it fails with
// broker.ErrNotConnected.
//
// Close first waits (bounded by its ctx) until the buffer is sent when the
// broker is connected, then disconnects with DISCONNECT, so the broker does
// not publish the will. Messages still buffered because the broker is away
// are counted in Stats.Lost and logged.
//
// paho's own store and AutoReconnect are not used for this. Probed against
// Mosquitto behind a cut proxy (paho v1.5.1, AutoReconnect on): while paho
// is reconnecting, a QoS 0 Publish completes its token with no error and
// the message is silently dropped; a QoS 1 Publish goes into paho's
// unbounded in-memory store with a token that completes only after the
// reconnect; right after the cut, before paho has noticed, tokens of either
// QoS stay pending; and before the first successful connect (without
// ConnectRetry) Publish fails with "not Connected". None of that gives a bounded
// buffer, a synchronous answer, or a count of what was refused.
//
// # MQTT 5
//
// paho v1 speaks MQTT 3.1.1, which has no response topic or correlation
// data: Publish ignores broker.Message.ResponseTopic and CorrelationData and
// received messages never carry them (the conformance harness declares
// MQTT5 false). Against an external broker the bridge correlates requests
// and results with the "transaction" field of its JSON payloads instead.
//
// # Concurrency
//
// A Client is safe for concurrent use. Its goroutines: the connection loop
// (run), the drainer of each connection, the OnConnect loop and one delivery
// goroutine per subscription; Close waits for all of them. Locks: subMu
// (orders SUBSCRIBE/UNSUBSCRIBE hand-offs to paho) is taken before mu
// (guards the connection state, the registry and the buffer); neither is
// held while waiting for the broker, and mu is never held across a paho
// call. Handlers and OnConnect run on their own goroutines and may call
// Publish and Subscribe, but must not call Close.
package external
