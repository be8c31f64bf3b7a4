// Package brokertest is the conformance suite for broker.Client
// implementations. Both broker/embedded and broker/external run it.
//
// API:
//
//	func Run(t *testing.T, newHarness func(t *testing.T) *Harness)
//
// Run calls newHarness once per case, from that case's own subtest, and the
// harness it returns holds everything the case needs:
//
//   - Client, the implementation under test (the suite closes it);
//   - Observer, a second, independent Client on the same broker, used to
//     publish to Client and to watch what Client publishes;
//   - ConnectWithWill, which connects a further client with an MQTT will and
//     gives the suite two ways to end it: kill (the connection drops without a
//     DISCONNECT, as when a process crashes) and close (clean DISCONNECT);
//   - the implementation's limits and abilities: MaxPacketSize, QueueSize
//     (capacity of one subscription's hand-off queue), Dropped (its drop
//     counter) and MQTT5 (response topic and correlation data pass through).
//
// newHarness registers its own cleanup with t.Cleanup (stopping a broker it
// started, for example). The suite closes Client and Observer itself, so Close
// must be idempotent. Cases never share topics: every case works below its own
// prefix "brokertest/<case>-<random>/", so one broker (a Mosquitto started once
// for the whole run) can serve every case, and the suite removes the retained
// messages it leaves.
//
// Behaviour the suite holds every implementation to, beyond the doc comments
// of broker.Client:
//
//   - Subscribe returns once the subscription is active: a message published
//     after it returns is delivered.
//   - Messages from one publisher to one subscription at QoS 1 arrive in the
//     order they were published.
//   - A retained message delivered because of a new subscription has
//     Retain == true; a message delivered live has Retain == false (MQTT
//     3.1.1 [MQTT-3.3.1-9]), even when it was published retained.
//   - The delivered QoS is the smaller of the publish QoS and the
//     subscription QoS.
//   - Publish does not keep m.Payload after it returns: the caller may reuse
//     the buffer. The Message a handler receives is the handler's to keep, but
//     its Payload may be shared with other subscriptions and must not be
//     modified.
//   - Two subscriptions on one Client, even with the same filter, are
//     independent: each handler gets each matching message once, and
//     unsubscribing one leaves the other.
//   - No handler runs after Close returns.
//   - A blocked handler stalls only its own subscription: other
//     subscriptions of the same Client keep receiving, the blocked one's
//     queue fills and further messages for it are dropped and counted.
//
// Concurrency: Run starts subtests sequentially; each case may use several
// goroutines of its own and waits for all of them before it returns.
package brokertest
