package handshake

import (
	"errors"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

var (
	// ErrDecrypt is returned for every failure of the RSA step on block 2
	// (wrong length, bad PKCS#1 v1.5 padding, plaintext shorter than 52
	// bytes), and on the client side for a session key that does not
	// decrypt to 40 bytes. It is one error on one code path, so neither the
	// error value nor the work done tells one failure from another (no
	// padding oracle, spark-protocol.md §7.4).
	ErrDecrypt = errors.New("handshake: block does not decrypt")

	// ErrBadNonce is returned when block 2 decrypts but does not start with
	// the nonce the server sent.
	ErrBadNonce = errors.New("handshake: nonce mismatch")

	// ErrShortRead is returned when the peer's block ends early (EOF) or the
	// read fails (a deadline). The error also wraps the read error, so
	// errors.Is(err, io.ErrUnexpectedEOF), io.EOF or
	// os.ErrDeadlineExceeded tell which.
	ErrShortRead = errors.New("handshake: short read")

	// ErrBadKey is returned when the key a Photon offers in block 2 (bytes
	// 52..213) is not a 1024-bit, e = 65537 RSA key in the firmware's
	// 162-byte SPKI layout, when the plaintext is longer than 52 bytes but
	// too short to hold that key, and when the key returned by Lookup is not
	// a device key. It is also returned by Client for an unusable server or
	// device key in ClientConfig.
	ErrBadKey = errors.New("handshake: bad device key")

	// ErrBadSignature is returned by Client when the server's signature
	// over the session key does not verify with the server public key.
	ErrBadSignature = errors.New("handshake: bad server signature")
)

// DeviceError is the error Server returns for a failure after the device
// id was read from block 2 (a bad offered key, a Lookup error such as
// keys.ErrUnknownDevice or keys.ErrKeyMismatch, a write error), so the
// caller can log and count by device with errors.As. It unwraps to the
// cause.
type DeviceError struct {
	ID  keys.DeviceID
	Err error
}

// Error returns "handshake: device <id>: <cause>".
func (e *DeviceError) Error() string {
	return "handshake: device " + e.ID.String() + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *DeviceError) Unwrap() error { return e.Err }
