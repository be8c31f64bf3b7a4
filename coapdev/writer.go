package coapdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// writeLoop is the only writer of the conn after the Hello. It owns the
// outbound IV chain (spark-protocol.md §3: encryption order is wire order),
// so callers enqueue plaintexts and only this loop encrypts. It drains the
// queue without blocking into one buffer, writes it once with a deadline,
// then blocks again (STYLE.md §3.3). A write error ends the session
// (SlowPeer past the deadline, PeerClosed otherwise).
func (s *Session) writeLoop() error {
	for {
		var b []byte
		select {
		case <-s.ctx.Done():
			return nil
		case b = <-s.out:
		}
		buf := frame.Seal(s.wbuf[:0], s.block, &s.wiv, b)
	batch:
		for len(buf) < maxBatch {
			select {
			case b = <-s.out:
				buf = frame.Seal(buf, s.block, &s.wiv, b)
			default:
				break batch
			}
		}
		if err := s.write(buf); err != nil {
			s.fail(classify(err, PeerClosed), err)
			return nil
		}
		if cap(buf) <= keepWriteBuf {
			s.wbuf = buf[:0]
		} else {
			s.wbuf = nil
		}
	}
}

// write writes b with the write deadline. A timeout wraps errSlow.
func (s *Session) write(b []byte) error {
	if err := s.conn.SetWriteDeadline(time.Now().Add(s.srv.cfg.WriteTimeout)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := s.conn.Write(b); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("write: %w: %w", errSlow, err)
		}
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// enqueue hands an encoded CoAP message to the write loop. It blocks while
// the queue is full, until ctx or the session ends.
func (s *Session) enqueue(ctx context.Context, b []byte) error {
	select {
	case s.out <- b:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-s.ctx.Done():
		return s.closedErr()
	}
}

// encode encodes m and checks that it fits one frame the device accepts.
func (s *Session) encode(m msg.Message) ([]byte, error) {
	b, err := m.Encode()
	if err != nil {
		return nil, fmt.Errorf("coapdev: %w", err)
	}
	if frame.PaddedLen(len(b)) > s.outMax {
		return nil, fmt.Errorf("%w: %d bytes of CoAP", ErrTooLarge, len(b))
	}
	return b, nil
}

// reply sends the answer to device message req from the read loop. The
// answer to a CON is kept, to be sent again if the device repeats it
// (spark-protocol.md §7.10).
func (s *Session) reply(req msg.Message, m msg.Message) error {
	b, err := s.encode(m)
	if err != nil {
		return err
	}
	if req.Type == msg.Confirmable {
		s.lastReplyID, s.lastReply = req.ID, b
	}
	return s.enqueue(s.ctx, b)
}

// ack sends an empty ACK (TKL 0) to a device CON; nothing to a NON.
func (s *Session) ack(req msg.Message) error {
	if req.Type != msg.Confirmable {
		return nil
	}
	return s.reply(req, msg.NewEmptyAck(req.ID))
}
