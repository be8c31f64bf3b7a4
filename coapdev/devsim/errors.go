package devsim

import "errors"

var (
	// ErrConfig reports an invalid Config or HeaterConfig or FleetConfig.
	ErrConfig = errors.New("devsim: invalid config")

	// ErrRunning is returned by Run and Dial while another connection of the
	// same Device is running: a device has one connection at a time.
	ErrRunning = errors.New("devsim: device already running")

	// ErrNotConnected is returned by the methods that need a connection
	// (Publish, Subscribe, SyncTime, Ping) when the Device has none, or when
	// it ended before the request was sent or answered.
	ErrNotConnected = errors.New("devsim: not connected")

	// ErrRateLimited is returned by Publish for the 5th event within one
	// second, which the firmware refuses (spark-protocol.md §5 "Device rate
	// limits"). Config.NoRateLimit turns the limit off.
	ErrRateLimited = errors.New("devsim: event rate limit")

	// ErrPeerClosed ends Run when the server closed the connection.
	ErrPeerClosed = errors.New("devsim: connection closed by the server")

	// ErrNoServerHello ends Run on a Photon when the server Hello did not
	// arrive in time (2 s on 0.7, 4 s on 0.8; spark-protocol.md §2.4).
	ErrNoServerHello = errors.New("devsim: no server hello")

	// ErrPingTimeout ends Run when nothing arrived within the ping timeout
	// after a keepalive ping (spark-protocol.md §5).
	ErrPingTimeout = errors.New("devsim: no answer to keepalive ping")

	// ErrArgTooLong ends Run on a Core that received a function argument of
	// 64 bytes or more: the Core drops the connection (spark-protocol.md
	// §4.4 "FunctionCall").
	ErrArgTooLong = errors.New("devsim: function argument too long")

	// ErrErrorAck ends Run on a 0.7 Photon that received an ACK with an
	// error code (e.g. 4.00 to its event or Subscribe): that firmware drops
	// the connection (spark-protocol.md §5, §6).
	ErrErrorAck = errors.New("devsim: error code in an ACK")

	// ErrProtocol ends Run when a frame does not hold a decodable CoAP
	// message: a device drops the connection on a parse failure
	// (spark-protocol.md §4.5).
	ErrProtocol = errors.New("devsim: protocol error")

	// ErrHandshake wraps every failure of the handshake (the server's
	// signature, a short read, a deadline).
	ErrHandshake = errors.New("devsim: handshake")
)
