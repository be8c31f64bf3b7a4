// Package mosquittotest starts real Mosquitto brokers for tests: each on a
// free 127.0.0.1 port, with its own config file, log and persistence directory
// in a temporary directory, stopped (by the PID of the process it started) when
// the test ends.
//
// It also offers the pieces broker and bridge tests need around a broker: a
// TCP Proxy whose connections can be cut abruptly (to make a broker publish a
// client's will), a WebSocket front (WSProxy) for brokers built without
// websockets, and a throw-away certificate authority (NewPKI) for TLS
// listeners.
//
// It owns only the processes, files and sockets it creates. It does not own
// MQTT clients: tests bring their own.
//
// Without Mosquitto installed, Start skips the test with a message saying how
// to install it (apt-get install -y mosquitto mosquitto-clients); when the
// environment sets SPARK2MQTT_REQUIRE_MOSQUITTO=1 (CI), a missing Mosquitto
// fails the test instead.
//
// Concurrency: a Broker's methods and a Proxy's methods are safe for
// concurrent use. Every goroutine this package starts (the process waiter, the
// proxy's accept and copy loops) ends when its owner is stopped or when the
// test's cleanup runs.
package mosquittotest
