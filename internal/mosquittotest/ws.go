package mosquittotest

import (
	"bufio"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// WSProxy is a minimal MQTT-over-WebSocket front (RFC 6455, binary frames,
// subprotocol "mqtt") for a broker's plain TCP listener. The Mosquitto
// packages of some distributions are built without websockets; this lets
// ws:// and wss:// clients be tested against them anyway.
type WSProxy struct {
	// URL is ws://host:port/mqtt, or wss://... when the proxy serves TLS.
	URL string

	target string
	ln     net.Listener
	wg     sync.WaitGroup // accept loop and per-connection loops; waited by Close

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // guarded by mu
	closed bool                  // guarded by mu
}

// wsGUID is the fixed string of RFC 6455 §1.3 hashed into Sec-WebSocket-Accept.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// NewWSProxy starts a WebSocket front for the broker at target (host:port).
// With a non-nil tlsConfig it serves wss. The test's cleanup closes it.
func NewWSProxy(t testing.TB, target string, tlsConfig *tls.Config) *WSProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mosquittotest: ws listen: %v", err)
	}
	scheme := "ws"
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
		scheme = "wss"
	}
	p := &WSProxy{
		URL:    fmt.Sprintf("%s://%s/mqtt", scheme, ln.Addr()),
		target: target,
		ln:     ln,
		conns:  make(map[net.Conn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *WSProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed by Close
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *WSProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *WSProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// serve does the opening handshake, then copies frames to the broker and
// bytes back as frames until either side ends.
func (p *WSProxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	key := req.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") || key == "" {
		fmt.Fprint(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		return
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n", base64.StdEncoding.EncodeToString(sum[:]))

	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	defer up.Close()

	var wmu sync.Mutex // serialises frame writes to c (data and pongs)
	done := make(chan struct{})
	go func() { // broker → client; ends when up fails or is closed below
		defer close(done)
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			if n > 0 {
				wmu.Lock()
				werr := writeFrame(c, 0x2, buf[:n])
				wmu.Unlock()
				if werr != nil {
					c.Close()
					return
				}
			}
			if err != nil {
				c.Close()
				return
			}
		}
	}()
loop:
	for { // client → broker
		op, payload, err := readFrame(br)
		if err != nil || op == 0x8 {
			break
		}
		switch op {
		case 0x0, 0x1, 0x2:
			if _, err := up.Write(payload); err != nil {
				break loop
			}
		case 0x9: // ping
			wmu.Lock()
			_ = writeFrame(c, 0xA, payload)
			wmu.Unlock()
		}
	}
	up.Close()
	<-done
}

// readFrame reads one client frame (always masked, RFC 6455 §5.3) and
// returns its opcode and unmasked payload.
func readFrame(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	op := h[0] & 0x0f
	masked := h[1]&0x80 != 0
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<28 {
		return 0, nil, errors.New("ws frame too large")
	}
	var mask [4]byte
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
	}
	return op, payload, nil
}

// writeFrame writes one unmasked, final server frame.
func writeFrame(w io.Writer, op byte, payload []byte) error {
	h := make([]byte, 0, 10+len(payload))
	h = append(h, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		h = append(h, byte(n))
	case n <= 0xffff:
		h = append(h, 126)
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h = append(h, 127)
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	_, err := w.Write(append(h, payload...))
	return err
}

// Close stops the front, closes its connections and waits for its
// goroutines. It is idempotent.
func (p *WSProxy) Close() {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	if !already {
		p.ln.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
