package external

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeBroker is a scripted MQTT 3.1.1 server on 127.0.0.1 for the answers
// Mosquitto will not give (CONNACK 2, 3 and 4, SUBACK 0x80, silence). Each
// connection is served by answer; the test's cleanup stops everything.
type fakeBroker struct {
	addr string
	ln   net.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func newFakeBroker(t *testing.T, answer func(c net.Conn, r *bufio.Reader)) *fakeBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeBroker{addr: ln.Addr().String(), ln: ln}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns = append(f.conns, c)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(opTimeout))
				answer(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// readPacket reads one MQTT packet: its first byte and its body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		mul *= 128
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return h, body, err
}

// connackAnswer answers CONNECT with CONNACK rc and hangs up.
func connackAnswer(rc byte) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, r *bufio.Reader) {
		if _, _, err := readPacket(r); err != nil {
			return
		}
		_, _ = c.Write([]byte{0x20, 2, 0, rc})
	}
}

// session answers CONNECT (accepted) and PINGREQ, ends at DISCONNECT or a
// read error, and hands every other packet to other, which ends the
// session by returning false.
func session(c net.Conn, r *bufio.Reader, other func(h byte, body []byte) bool) {
	for {
		h, body, err := readPacket(r)
		if err != nil {
			return
		}
		switch h >> 4 {
		case 1: // CONNECT
			_, _ = c.Write([]byte{0x20, 2, 0, 0})
		case 12: // PINGREQ
			_, _ = c.Write([]byte{0xd0, 0})
		case 14: // DISCONNECT
			return
		default:
			if !other(h, body) {
				return
			}
		}
	}
}

// refuseSubscriptions accepts the connection and answers every SUBSCRIBE
// with 0x80 for each filter.
func refuseSubscriptions(c net.Conn, r *bufio.Reader) {
	session(c, r, func(h byte, body []byte) bool {
		if h>>4 == 8 { // SUBSCRIBE: packet id, then (filter, qos) pairs
			mid := body[:2]
			var codes []byte
			for p := 2; p+2 <= len(body); {
				l := int(binary.BigEndian.Uint16(body[p:]))
				p += 2 + l + 1
				codes = append(codes, 0x80)
			}
			out := append([]byte{0x90, byte(2 + len(codes))}, mid...)
			_, _ = c.Write(append(out, codes...))
		}
		return true
	})
}

// ignoreSubscriptions accepts the connection and never answers SUBSCRIBE.
func ignoreSubscriptions(c net.Conn, r *bufio.Reader) {
	session(c, r, func(byte, []byte) bool { return true })
}

// publishPacket is a PUBLISH as the fake broker received it.
type publishPacket struct {
	topic   string
	qos     byte
	payload string
}

// parsePublish decodes the body of a PUBLISH whose first byte is h.
func parsePublish(h byte, body []byte) (p publishPacket, mid []byte) {
	p.qos = h >> 1 & 3
	l := int(binary.BigEndian.Uint16(body))
	p.topic = string(body[2 : 2+l])
	rest := body[2+l:]
	if p.qos > 0 {
		mid, rest = rest[:2], rest[2:]
	}
	p.payload = string(rest)
	return p, mid
}

// ackPublishes accepts the connection, acknowledges every QoS 1 PUBLISH
// and sends what it received to got.
func ackPublishes(got chan<- publishPacket) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, r *bufio.Reader) {
		session(c, r, func(h byte, body []byte) bool {
			if h>>4 == 3 {
				p, mid := parsePublish(h, body)
				if p.qos == 1 {
					_, _ = c.Write(append([]byte{0x40, 2}, mid...))
				}
				got <- p
			}
			return true
		})
	}
}
