// Package handshake implements both sides of the Spark RSA handshake
// (spark-protocol.md §2): the server side, which authenticates a Core or
// Photon by its device key and hands it the AES session material, and the
// device side used by coapdev/devsim.
//
//	S→D  40 bytes   nonce
//	D→S  256 bytes  RSA-2048 PKCS#1 v1.5 (nonce ‖ id [‖ Photon SPKI])
//	S→D  384 bytes  C = RSA-1024 PKCS#1 v1.5 (M) ‖ SIG = type-1 pad (HMAC-SHA1(M, C))
//
// It owns the wire steps and their checks (§2.2): exact reads
// (io.ReadFull of 40/256/384 bytes), the RSA operations, the constant-time
// nonce comparison, the parsing of the Photon's offered key and the split of
// the 40-byte material M into key, IV and salt (§2.3). It does not own key
// storage (coapdev/keys; the server reaches it through a Lookup func),
// deadlines (the caller sets them on the conn), limits on concurrent
// handshakes, the framed AES channel that follows, or logging.
//
// Padding oracle (§2.1, §7.4). PKCS#1 v1.5 decryption under a key an
// attacker can probe is a Bleichenbacher oracle if the attacker can tell a
// block with good padding from one with bad padding. crypto/rsa's
// DecryptPKCS1v15 runs its padding check in constant time and returns one
// verdict; ParseBlock2 maps every RSA, padding and length failure to the one
// error ErrDecrypt and does the same work (nonce comparison on a buffer of
// the same size, combined verdict, one branch) whether or not the padding
// was good. An attacker who does not know the nonce cannot produce a good
// block except by chance, so in an attack ErrDecrypt and ErrBadNonce are the
// two outcomes to hide: the caller must answer both identically on the wire
// (close the conn at once, or after the same fixed delay) and must not make
// either outcome observable to the peer in any other way. The remaining
// difference is inside crypto/rsa (it copies the plaintext out on success),
// nanoseconds against a 1 ms decryption and network jitter. Failures after
// the nonce check (ErrBadKey, lookup errors) need no such care: reaching
// them requires a block encrypted for the current nonce, whose plaintext the
// sender already knows.
//
// Weak by today's standards but fixed by the firmware: 1024-bit device
// keys, PKCS#1 v1.5 without a MAC on block 2, SHA-1 HMAC (§7).
//
// Concurrency: Server and Client run one handshake on one conn in the
// calling goroutine and keep no state between calls; any number may run
// concurrently (the Lookup func must then be safe for concurrent use, as
// keys.Store is). ParseBlock2, SealSessionKey and OpenSessionKey are pure.
package handshake
