// Package devsim is a simulated Spark Core or Photon: the device side of
// the Spark cloud protocol (spark-protocol.md), built from the same pieces
// as the server — coapdev/handshake (client side), coapdev/frame and
// coapdev/msg — so the server's tests, `spark2mqtt simulate` and the load
// benchmarks talk to something that behaves like the firmware, quirks
// included.
//
// A Device runs one connection at a time (Run on a net.Conn, or Dial):
//
//  1. the handshake (§2): read the nonce, send block 2 (Core 52 bytes,
//     Photon 214 with its public key), verify the server's signature, seed
//     the message-id and token counters from the salt per firmware (§2.3);
//  2. its Hello (NON POST h: 6 bytes on a Core, 8 with platform 6 on a
//     Photon); a Photon then waits for the server Hello (2 s on 0.7, 4 s on
//     0.8) and drops the connection without it (§2.4);
//  3. optionally the system messages a recorded Photon sends
//     (Config.SystemMessages), then the application's start (setup():
//     functions, variables, Subscribes, Config.App), possibly held until
//     the first Describe has been answered (Config.DescribeAtOnceEmpty);
//  4. serving: Describe, FunctionCall, VariableRequest, events to the
//     device, Signal, pings both ways, GetTime answers; Publish, Subscribe,
//     SyncTime and Ping from the caller; the keepalive (§5).
//
// Firmware selects Core, Photon07 or Photon08; every behavioural difference
// (§6 and the recorded sessions) is one field of the quirks table in
// firmware.go. Notable choices: a 0.8 Photon's Hello carries flags 0x02
// (recorded; 0x04 never appeared), the ACKs to Signal and to a server ping
// use up a new device id on 0.8 only, a 0.7 Photon drops the connection on
// an error code in an ACK, a Core drops it on a 64-byte function argument
// while a Photon ACKs 4.00 and runs the function with the previous
// argument, and events and 2.05 replies are written byte by byte as the
// firmware writes them (3-byte Max-Age, a payload marker even for empty
// data).
//
// Heater is the mission's water heater on top of a Device; Fleet runs many
// devices against one server with bounded handshake concurrency.
//
// devsim does not own the server (package coapdev), OTA updates (an
// UpdateBegin is refused with 5.03), or any retry policy of a single Device
// (Fleet reconnects).
//
// Concurrency: Device, Heater and Fleet methods are safe for concurrent use.
// A connection runs the loop on Run's own goroutine plus two more, all
// ended when Run returns: a reader (owns the inbound frame.Reader) and a
// writer (owns the outbound IV chain: only it encrypts, so encryption order
// is wire order; bounded queue, the loop waits when it is full). The loop
// owns every counter, token and pending request and runs the functions,
// variable getters and callbacks like a single-threaded device, so they
// must not block. Config.App runs in a
// fourth goroutine while the application is up. The methods talk to the
// loop over a bounded channel. Device.mu guards the fields named in Device;
// it is never held across I/O, a channel operation or a callback.
package devsim
