// Package keys owns the RSA keys of the Spark protocol (spark-protocol.md
// §1): the server key (created on first use, loaded after), its export in
// the forms a device is flashed with (the 294-byte DER, the 128-byte server
// address block, the 512-byte server key blob), the device id, and the
// Store of device public keys, a folder in the reference cloud's layout
// (<id>.pub.pem, with <id>_handshake.pub.pem candidates) so existing key
// folders can be reused.
//
// It does not own the handshake that uses the keys (coapdev/handshake) or
// the policy of what to log about a refused device (coapdev); it never
// logs. Security notes: a device key is RSA-1024 and the server signs a
// SHA-1 HMAC; the firmware fixes both (§7.6). A key a device offers in its
// handshake is only trusted in TOFU mode, on first use.
//
// Concurrency: the functions are safe for concurrent use. A Store is safe
// for concurrent use within a process; its changes are serialised by one
// mutex and every file is written by temp file + rename, so readers (this
// process or another) never see a partial key.
package keys
