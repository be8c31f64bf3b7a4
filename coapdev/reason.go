package coapdev

import "strconv"

// CloseReason says why a session or a handshake ended. Its String form is
// the "reason" log attribute and the metric label (STYLE.md §4).
type CloseReason uint8

// Close reasons.
const (
	// PeerClosed: the device closed the connection (EOF, reset) or the
	// stream ended inside a frame.
	PeerClosed CloseReason = iota + 1
	// Handshake: the handshake failed for a reason other than the ones
	// below: cut short, timed out (HandshakeTimeout), a bad offered key, no
	// handshake slot before the deadline.
	Handshake
	// Decrypt: block 2 did not decrypt (RSA), or a frame had bad padding
	// (AES); one reason for both, as there is one error for each.
	Decrypt
	// BadNonce: block 2 did not start with the nonce we sent.
	BadNonce
	// UnknownDevice: the key store has no trusted key for the device id.
	UnknownDevice
	// KeyMismatch: the key the device offered differs from the stored one.
	KeyMismatch
	// TooLarge: a frame longer than the device kind's limit.
	TooLarge
	// Protocol: a frame of length 0 or not a multiple of 16, undecodable
	// CoAP, a first message that is not a valid Hello, or a message id
	// that breaks the device counter (spark-protocol.md §4.2, §7.10).
	Protocol
	// Idle: nothing arrived from the device for IdleTimeout.
	Idle
	// SlowPeer: a write did not complete within WriteTimeout.
	SlowPeer
	// Replaced: the same device completed a newer session.
	Replaced
	// Shutdown: the Serve context was cancelled.
	Shutdown
	// Closed: Session.Close was called.
	Closed
)

var reasonNames = [...]string{
	PeerClosed:    "peer_closed",
	Handshake:     "handshake",
	Decrypt:       "decrypt",
	BadNonce:      "bad_nonce",
	UnknownDevice: "unknown_device",
	KeyMismatch:   "key_mismatch",
	TooLarge:      "too_large",
	Protocol:      "protocol",
	Idle:          "idle",
	SlowPeer:      "slow_peer",
	Replaced:      "replaced",
	Shutdown:      "shutdown",
	Closed:        "closed",
}

// numReasons bounds the per-reason counters.
const numReasons = len(reasonNames)

// String returns the snake_case label, e.g. "peer_closed".
func (r CloseReason) String() string {
	if int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}
