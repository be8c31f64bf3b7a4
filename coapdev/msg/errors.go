package msg

import "errors"

var (
	// ErrMalformed reports bytes that are not a CoAP message this package
	// accepts, or a payload that does not fit its message (Hello, event,
	// subscription, value, function return). Every decode failure wraps it.
	ErrMalformed = errors.New("msg: malformed message")

	// ErrEncode reports a Message that cannot be encoded: a type above 3, a
	// token over 8 bytes, an option value over 255 bytes or a result over
	// MaxSize.
	ErrEncode = errors.New("msg: message cannot be encoded")

	// ErrDescribe reports a Describe payload that cannot be parsed even
	// leniently, or that exceeds MaxDescribeSize or MaxNames.
	ErrDescribe = errors.New("msg: bad describe payload")
)
