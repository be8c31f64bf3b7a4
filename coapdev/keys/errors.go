package keys

import "errors"

var (
	// ErrUnknownDevice is returned by Store.Lookup when no trusted key is
	// stored for the device id (and, in TOFU mode, none can be learnt from
	// the handshake because the device did not offer one), and by Accept when
	// there is no pending candidate to promote.
	ErrUnknownDevice = errors.New("keys: unknown device")

	// ErrKeyMismatch is returned by Store.Lookup when the device offered a
	// public key that differs from the one stored for its id.
	ErrKeyMismatch = errors.New("keys: offered key differs from the stored key")

	// ErrBadKey is wrapped by every error about a key that cannot be parsed
	// or does not have the shape the protocol needs (size, exponent, layout).
	ErrBadKey = errors.New("keys: bad key")

	// ErrBadDeviceID is wrapped by ParseDeviceID errors: a device id is
	// exactly 24 hex digits.
	ErrBadDeviceID = errors.New("keys: bad device id")

	// ErrBadAddress is wrapped by AddressBlock errors: the host is not an
	// IPv4 address or a domain name of 1 to 64 printable ASCII bytes.
	ErrBadAddress = errors.New("keys: bad server address")
)
