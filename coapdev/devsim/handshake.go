package devsim

import (
	"fmt"
	"net"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
)

// handshake runs the device side of spark-protocol.md §2 on conn under
// HandshakeTimeout: read the nonce, send block 2 (52 bytes of plaintext on a
// Core, 214 with the public key on a Photon), read and verify the server's
// 384 bytes.
func (d *Device) handshake(conn net.Conn) (*handshake.Session, error) {
	if err := conn.SetDeadline(time.Now().Add(d.cfg.HandshakeTimeout)); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	kind := handshake.Core
	if d.q.photon {
		kind = handshake.Photon
	}
	s, err := handshake.Client(conn, handshake.ClientConfig{
		ServerKey: d.cfg.ServerKey,
		DeviceKey: d.key,
		DeviceID:  d.cfg.DeviceID,
		Kind:      kind,
		Rand:      d.cfg.Rand,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	return s, nil
}
