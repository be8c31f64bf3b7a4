// Package msg is the CoAP layer of the Spark device protocol
// (spark-protocol.md §4): it decodes and encodes the plaintext of one frame
// with go-coap's RFC 7252 codec (udp/coder; its transports are not used),
// classifies a message into a Kind (the routing table of §4.3/§4.4), builds
// every message the project sends, and parses the payloads: the Hello, events,
// subscriptions, variable values, function returns and the Describe JSON.
//
// It does not own framing or encryption (coapdev/frame), message-ID and
// token bookkeeping, request matching or timeouts (coapdev), nor any policy
// (which limits apply to which device kind); it only enforces the bounds a
// parser needs to protect memory.
//
// Device rules the builders follow (spark-protocol.md §4.1): tokens on S→D
// requests are exactly 1 byte; the first Uri-Path is one character; options
// are in ascending order (Uri-Path 11, Max-Age 14, Uri-Query 15); a
// FunctionCall always carries its Uri-Query, even empty (0x40); empty ACKs
// have no token (§7.11); Max-Age is a minimal-length uint.
//
// Errors: every decode failure wraps ErrMalformed, every Describe failure
// wraps ErrDescribe, every encode failure wraps ErrEncode.
//
// Concurrency: everything here is a pure function of its arguments; values
// are safe to share once built. Decoded messages alias the input buffer
// (see Decode).
package msg
