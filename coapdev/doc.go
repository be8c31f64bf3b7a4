// Package coapdev is the device side of spark2mqtt: it accepts Spark Core
// and Particle Photon connections on TCP (the Spark cloud protocol,
// ../shared/spark-protocol.md) and runs one Session per device.
//
// It owns the accept loop (Server), the sessions and their bookkeeping:
// message-id counters, request tokens, timeouts, describes, subscriptions,
// and the delivery of device events to a Handler. Its sub-packages own the
// layers below: keys (server key, device key store), handshake (the RSA
// handshake), frame (AES-128-CBC framing), msg (CoAP messages), and devsim
// (a simulated device, the client side). It knows nothing of MQTT.
//
// # Protocol flow of one connection
//
//  1. Handshake (§2): 40-byte nonce, 256-byte block 2, 384-byte session
//     key, under Config.HandshakeTimeout, which also covers the wait for a
//     handshake slot (Config.MaxHandshakes bounds the RSA work; a slot is
//     taken only once block 2 has arrived) and the device Hello.
//  2. Framed AES channel (§3). The first frame must be the device Hello
//     (POST h, §2.4); its message id is the base of the device counter.
//     The server Hello (NON POST h, no token, no payload) goes out at once:
//     a Photon gives up after 2–4 s. Only now is the device proven (§7.3):
//     the session replaces an older one of the same device and
//     Handler.SessionStarted is called.
//  3. Describe (CON GET d) at once, and again when the application runs
//     (first non-system Subscribe or event, or Config.AppDescribeDelay
//     after the Hello), because the first answer is usually empty (§2.4);
//     and again whenever Call or Get name something missing.
//  4. Routing (§4.3): pings get an empty ACK; device CON/NON ids must go
//     up by one (a repeat of the last id is a duplicate and is re-ACKed;
//     anything else ends the session with reason Protocol); a Photon ≥ 0.8
//     ACK that uses up a device id advances the counter (§4.2); responses
//     are matched by token, piggybacked or separate; events go to the
//     Handler (CON ones get an empty ACK); Subscribes are recorded and get
//     an empty ACK; GetTime gets ACK 2.05 with the time. Unknown requests
//     get an empty ACK if CON and are otherwise ignored: never a 4.xx, which
//     a 0.7 Photon answers by disconnecting (§5, §6).
//  5. The session ends on any crypto, framing, CoAP or counter error, on
//     Config.IdleTimeout of silence (the device pings every 15 s; the
//     server pings after Config.PingInterval of silence), on a write past
//     Config.WriteTimeout, on Close, on a newer session of the same device,
//     or when Serve's context ends. Every end has a CloseReason.
//
// # Concurrency
//
// Serve runs one goroutine per connection and waits for all of them. A
// session's connection goroutine is its read loop: it owns the inbound
// cipher and the device counter. A second goroutine, the write loop, owns
// the outbound cipher and IV chain and is the only writer; everyone else
// enqueues plaintext CoAP on a bounded queue. Handler calls go through a
// bounded per-session queue and a delivery goroutine that runs only while
// the queue is not empty, so a slow Handler never stalls a session. The
// one exception is the optional SubscribeHandler, called on the read loop
// itself, so that a Handler's index of subscriptions is never behind
// Session.Subscribed. Asynchronous timeouts (Describe, idle ping, application describe) are
// time.AfterFunc timers, stopped when the session ends.
//
// Locks: Server.mu guards the session registry; Session.mu guards the
// pending requests, the message-id counter, subscriptions and the
// description; delivery.mu guards the handler queue. They never nest, and
// none is held across I/O, a channel send or a callback.
//
// # Limits
//
// Requests that a device cannot take are refused before anything is sent
// (see Limits): function and variable names over 12 bytes on a Core (64 on
// a Photon), arguments over 63 bytes, event data over 63 (Core) or 255
// (Photon) bytes, and any message whose frame would exceed 640 bytes.
package coapdev
