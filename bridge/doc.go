// Package bridge maps device sessions to MQTT: the topic layout, the
// variable cache and polling, function calls with their per-device queue
// and the calls held for offline devices, events in both directions, the
// device inventory, the devices file and Home Assistant discovery (whose
// payloads package bridge/hass builds).
//
// It owns none of the transports: devices come in through the narrow Device
// interface (a *coapdev.Session behind NewDevice, fed by the coapdev.Handler
// from Bridge.Handler), and MQTT goes out through a broker.Client. It never
// imports mochi or paho, keeps no files of its own, and reads no
// environment: cmd builds its Config.
//
// # Topics (base "spark"; D is the device's name from the devices file, else its 24-hex id)
//
//	spark/bridge/state             out  online/offline, retained (the will says offline)
//	spark/bridge/devices           out  JSON inventory (InventoryDevice list), retained, debounced
//	spark/D/availability           out  online after the Hello, offline at session end, retained
//	spark/D/var/NAME               out  value as text (48.5, 1, true, raw string), retained
//	spark/D/var/NAME/get           in   read now; MQTT 5 response {"var","value"|"error"}
//	spark/D/fn/NAME                in   call with the payload as argument, verbatim
//	spark/D/fn/NAME/call           in   {"arg":"on","transaction":"t1","ttl":3600}
//	spark/D/fn/NAME/result         out  {"arg","return_value"|"error"|"queued","transaction"}
//	spark/D/fn/NAME/pending        out  the held call (JSON), retained; emptied when done
//	spark/D/event/NAME...          out  device events, raw data, QoS 1, not retained
//	spark/events/NAME...           in   event for every online device subscribed to NAME
//	spark/D/signal                 in   on/off (also 1/0, true/false)
//	spark/D/remove                 in   remove the device from Home Assistant (Config.Discovery)
//	homeassistant/device/ID/config out  Home Assistant discovery config (package hass), retained
//	homeassistant/status           in   Home Assistant's birth: "online" → announce again
//
// Commands are accepted on the id as well as on the name; everything the
// bridge publishes uses D. Commands that arrive retained are ignored (they
// would run again at every restart): publish commands without retain.
//
// # Function calls
//
// Calls to one device run one at a time, in the order they were made, and
// only one device request (call, read, describe or signal) is ever in flight
// to a device. The queue holds at most one waiting call per function: a
// newer call for the same function replaces the waiting one, which gets the
// error result "superseded" (the last wish wins: a flood of 10,000 calls
// costs one slot, and every call gets exactly one final result). At most 64
// functions may have a waiting call per device ("queue full").
//
// A call for an offline device is held: published as the retained
// fn/NAME/pending, with a retained queued result at once. Its ttl is the
// request's "ttl" in whole seconds (default Config.QueueTTL, at most
// Config.MaxTTL; 0 means "do not hold": an offline device gives "device
// offline"). Held calls are delivered, in the order they were made, once the
// device has completed its handshake and its application has described its
// functions; then the real result is published and pending is emptied.
// Expiry publishes the error result "expired" and empties pending. Calls
// still waiting for a device that goes offline, or when the bridge stops,
// are held the same way, so nothing waiting is lost.
//
// A known device is one in the devices file, in the key store (Config.Known),
// seen by this process, or restored from the broker (inventory, availability
// or pending). A call for any other device gets "unknown device". A call
// for a function missing from the device's description gets "unknown
// function" (when the device is online, after the device described itself
// again once; when offline, against its last description).
//
// Results are retained when they are the outcome of an accepted call
// (return value, queued, expired, timeout, device disconnected, interrupted,
// device error). Refusals at input (unknown device or function, invalid
// request or ttl, argument too long, device offline with ttl 0, queue full)
// and "superseded" are published but not retained, so a typo leaves no
// retained topic and the retained result stays the last real outcome.
// When a request carries an MQTT 5 response topic and correlation data, its
// results (queued and final) go there too; the pending message keeps them,
// so a call delivered after a restart still answers its requester.
//
// Error texts of the result, a stable part of the contract: "unknown device",
// "unknown function", "argument too long", "invalid request: <what>",
// "superseded", "expired", "device offline", "device disconnected" (the
// session ended during the call: the device may have run it, it is not run
// again), "timeout" (idem), "queue full", "interrupted: ..." (the bridge
// stopped during the call or while delivering it), "device error: <code>".
//
// # Restart and exactly-once delivery
//
// The held calls live in the broker. At start Run subscribes to the
// retained inventory, availability and pending topics, publishes a marker
// behind them and waits for it (restore.go), then queues the held calls in
// the order they were made; device workers deliver nothing before that, so a
// device that connects during the start gets each held call once. A held
// call is marked (pending republished with "delivering_at") before it goes
// to the device, and pending is emptied after its result: a bridge that
// dies during a delivery leaves the mark, and the next start publishes the
// error result "interrupted" instead of running the call twice. In the
// normal path every held call runs exactly once; after a crash at the
// wrong moment it runs at most once, and its requester is told.
//
// # Variables
//
// While a device is online each variable is read every poll interval
// (Config.PollInterval, overridden per device and per variable by the
// devices file, or "off"). A read is published (retained) when the value
// changed, when the last publish is older than Freshness(poll) =
// max(10 × poll, 5 min), and always after a get. Gets for a variable whose
// read is waiting or in flight join that read: any number of simultaneous
// gets cost one device read.
//
// # Events
//
// Device events are published on spark/D/event/NAME (QoS 1, not retained)
// and delivered to every other online device subscribed to them, never back
// to their publisher. System events (names starting with "spark" or
// "particle") are neither published nor forwarded unless
// Config.SystemEvents. Events from spark/events/NAME go to every online
// device whose subscription prefix matches NAME. Device events go through a
// bounded queue that drops the oldest when full (counted). Subscriptions
// reach the bridge through DeviceSubscribed (the coapdev.Handler calls it
// before the device's Subscribe is acknowledged) and are indexed by prefix,
// so an event costs one lookup per distinct prefix length, whatever the
// number of online devices.
//
// # Home Assistant discovery
//
// With Config.Discovery the bridge announces each device to Home Assistant
// (one retained device-based config per device, built by package hass from
// its description, hello and devices-file section) once its application
// description is known, and again after a Describe that changed it; an
// unchanged config is not published again. A component whose function or
// variable disappeared is removed (published once as a platform-only stub,
// then left out). At start the retained configs are read back, so this
// also holds across restarts. When Home Assistant publishes "online" on
// <prefix>/status every announced device is published again after a
// random DiscoveryDelayMin–Max; however many such messages arrive while one
// re-announcement is pending, there is one. Republish re-announces at once.
// A request on spark/D/remove (D a name or an id, even of a device the
// bridge never saw; not retained) publishes the empty retained config,
// which deletes the device in Home Assistant, and keeps it unannounced
// until its next session. An MQTT 5 request gets {"device","removed"} or
// {"device","error"} on its response topic. A declared entity that names
// a function or variable the device lacks is logged (Warn, once per
// build that changes the warnings) and left out.
//
// # Concurrency
//
// Goroutines, all owned by Run and ended before it returns:
//   - the dispatcher: takes the inbound MQTT messages, in order, from one
//     bounded queue fed by the broker handlers (which only copy and enqueue;
//     a full queue drops the message, counted and logged); it parses
//     requests, queues calls and gets, and owns the restore at start;
//   - the event loop: publishes device events and delivers events to
//     devices;
//   - housekeeping: debounced inventory, expiry of held calls;
//   - with Config.Discovery, the discovery loop (discovery.go): the only
//     publisher of the discovery configs; others hand it requests under
//     discovery.mu and a cap-1 kick channel, never blocking;
//   - one worker per online device session: the only goroutine that sends
//     requests to that device (describe, calls, reads, signal), so at most
//     one is in flight per device; it exits when the session ends or Run
//     stops. DeviceOnline, DeviceEvent, DeviceSubscribed and DeviceOffline
//     never block.
//
// Locks, in order: Bridge.mu (the device map and run state) before dev.mu
// (one device's state: session, calls, cache); dev.pubMu before dev.mu.
// Bridge.mu and dev.pubMu are never held together. dev.pubMu serialises the
// publishes of one device's retained state (availability, values, results,
// pending), so the broker sees them in the order of the state changes,
// also when Republish (after a broker reconnect) runs at the same time; it
// is the only lock held across a Publish. No lock is held across a device
// request. discovery.mu is a leaf: nothing else is locked while it is held;
// so is the subscription index's lock (subIndex.mu).
package bridge
