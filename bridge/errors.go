package bridge

import "errors"

// Sentinel errors returned by New and LoadDevicesFile. Compare them with
// errors.Is; the wrapping error names the field, file or line.
var (
	// ErrConfig is returned by New for an invalid Config.
	ErrConfig = errors.New("bridge: invalid config")
	// ErrDevicesFile is returned by LoadDevicesFile and ParseDevicesFile for
	// a devices file that cannot be used; the message names the file, the
	// line and the key.
	ErrDevicesFile = errors.New("bridge: invalid devices file")
	// ErrTopicLevel is returned for a string that is not a usable MQTT topic
	// level (empty, or with '+', '#', '/' or NUL in it).
	ErrTopicLevel = errors.New("bridge: invalid topic level")
	// ErrAlreadyRunning is returned by Run when the Bridge is running or has
	// run before: a Bridge runs once.
	ErrAlreadyRunning = errors.New("bridge: already run")
)
