package embedded

import "errors"

var (
	// ErrConfig is returned by New for an invalid Config.
	ErrConfig = errors.New("embedded: invalid config")
	// ErrUsersFile is returned for a users file that cannot be used; the
	// wrapped message names the line.
	ErrUsersFile = errors.New("embedded: users file")
	// ErrStarted is returned by Start when the broker was started already or
	// closed.
	ErrStarted = errors.New("embedded: broker already started or closed")
)

// ErrInvalidQoS is returned for a QoS above 2.
var ErrInvalidQoS = errors.New("embedded: invalid qos")
