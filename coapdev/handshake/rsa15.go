package handshake

import (
	"crypto/rsa"
	"io"
)

// The protocol fixes PKCS#1 v1.5 encryption in both directions
// (spark-protocol.md §2.1); the firmware cannot do OAEP. crypto/rsa marks
// these functions deprecated for new designs, so the calls are kept here,
// in one place.

func decryptPKCS1v15(priv *rsa.PrivateKey, ct []byte) ([]byte, error) {
	//lint:ignore SA1019 the device firmware fixes PKCS#1 v1.5 (spark-protocol.md §2.1)
	return rsa.DecryptPKCS1v15(nil, priv, ct) //nolint:staticcheck // SA1019: the firmware fixes PKCS#1 v1.5
}

func encryptPKCS1v15(random io.Reader, pub *rsa.PublicKey, msg []byte) ([]byte, error) {
	//lint:ignore SA1019 the device firmware fixes PKCS#1 v1.5 (spark-protocol.md §2.1)
	return rsa.EncryptPKCS1v15(random, pub, msg) //nolint:staticcheck // SA1019: the firmware fixes PKCS#1 v1.5
}
