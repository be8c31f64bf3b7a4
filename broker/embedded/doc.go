// Package embedded runs an MQTT broker (mochi-mqtt v2) inside the
// spark2mqtt process and gives the bridge broker.Client values that talk to
// it in-process (mochi's inline publish and subscriptions), with no socket
// in between.
//
// It owns: the listeners (plain TCP, optional TLS, optional WebSocket), all
// opened by New so their bound addresses are known at once; authentication
// and topic ACLs (anonymous from loopback only by default, or the accounts
// of a users file; the topics that carry device state are writable by the
// bridge alone); persistence of retained messages, sessions and the
// in-flight messages of persistent sessions in the data dir (badger,
// written in order behind the publishes by the store's own goroutine); and
// the capabilities that make mochi fit the bridge: retained messages never
// expire by age, a bounded write queue per network client, a maximum packet
// size.
//
// It does not own: topics and payloads (package bridge), the choice between
// this broker and an external one (cmd), or the bridge's birth message (the
// bridge publishes "online" itself once started). The bridge's will is
// special in-process: there is no connection to lose, so the Broker
// publishes Config.Will at Start and at Close (see Config.Will).
//
// mochi (v2.7.9) needed help in five places, each in its own file: its
// storage hook leaks a goroutine, persists inline subscriptions and makes
// every publish wait for a badger transaction (store.go replaces it); it
// shares one packet-identifier space between client and server, refusing a
// client's SUBSCRIBE that collides with a delivery in flight, and does not
// announce its maximum packet size (packetid.go); it drops deliveries to a
// client whose small write queue is full, QoS 1 included, and QoS 1
// deliveries to one slow to acknowledge them (its in-flight window full),
// and lets a client that stops reading hold publishers for 1.5 × keepalive
// (pacer.go, and writeTimeoutConn in listener.go); its inline subscriptions
// miss the parent level of "a/#" (client.go); it scans its topic index for
// the retained messages of a wildcard subscription without the lock its
// writers hold, a data race (retainlock.go). One limitation stays: a
// network client's "a/+/#" does not match "a/b".
//
// Concurrency: Broker and Client are safe for concurrent use. mochi calls
// inline subscription callbacks on the publishing goroutine (a network
// client's read loop, or a caller of Client.Publish); each subscription
// hands messages to a bounded queue drained by its own delivery goroutine,
// which exists only while the queue is non-empty, so a slow handler costs
// its own subscription dropped messages (oldest first, counted) and never
// stalls the broker or other subscriptions. Client.Close waits for those
// goroutines; Broker.Close waits for every listener goroutine and network
// connection. Lock order: Client.mu before subscription.mu before mochi's
// topic index lock, which is taken around every retained scan, inline or
// for a network client's SUBSCRIBE, and never held across a wait
// (retainlock.go); mochi's own locks are never held when a subscription
// lock is taken by a publisher.
package embedded
