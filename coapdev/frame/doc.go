// Package frame is the AES-128-CBC framing of a Spark device session
// (spark-protocol.md §3): every message after the handshake travels as
//
//	frame      = len (u16 BE) ‖ ciphertext (len bytes)
//	ciphertext = AES-128-CBC(key, iv, plaintext ‖ PKCS#7 padding)
//
// It owns the padding rules, the frame size limits and the two independent
// IV chains (one per direction, both starting at the session IV; the next IV
// is the FIRST ciphertext block of the previous frame in that direction, not
// the last as in ordinary CBC chaining).
//
// It does not own the socket, deadlines, buffering (wrap the conn in a
// bufio.Reader yourself), the handshake that produced the key and IV
// (coapdev/handshake) or the CoAP inside the frames (coapdev/msg).
//
// Concurrency: a Reader and a Writer are each owned by one goroutine (the
// session's read loop and write loop); neither is safe for concurrent use.
// The two share nothing, so one reader goroutine and one writer goroutine may
// run at the same time. Seal and Open are pure functions of their arguments.
//
// Security (spark-protocol.md §7.1): there is no MAC. Padding failures all
// return the single error ErrDecrypt, checked in constant time, and every
// error is sticky on a Reader or Writer: the caller must drop the connection
// on the first error.
package frame
