package mosquittotest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy on 127.0.0.1 in front of a broker. Cut drops every
// connection through it at once, without the client saying DISCONNECT: to the
// broker it looks like a crashed client (it publishes the will), to the client
// like a broken network.
type Proxy struct {
	// Addr is the proxy's listening address (host:port); URL is tcp://Addr.
	Addr string
	URL  string

	target    string
	ln        net.Listener
	wg        sync.WaitGroup // accept loop and copy loops; waited by Close
	blackhole atomic.Bool    // drop all bytes, keep the connections

	mu      sync.Mutex
	conns   map[net.Conn]struct{} // guarded by mu: both sides of every live pair
	refuse  bool                  // guarded by mu: close new connections at once
	closed  bool                  // guarded by mu
	accepts int                   // guarded by mu: connections accepted so far
}

// NewProxy starts a proxy to target (host:port). The test's cleanup closes it.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mosquittotest: proxy listen: %v", err)
	}
	p := &Proxy{
		Addr:   ln.Addr().String(),
		URL:    "tcp://" + ln.Addr().String(),
		target: target,
		ln:     ln,
		conns:  make(map[net.Conn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // the listener was closed by Close
		}
		p.mu.Lock()
		p.accepts++
		refuse := p.refuse || p.closed
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, up) {
			c.Close()
			up.Close()
			continue
		}
		p.wg.Add(2)
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst until either side fails, then closes both.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.blackhole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break // EOF or a cut: either way the pair is finished
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut closes every connection through the proxy abruptly (the client side
// with a reset). New connections are accepted as before unless Refuse was
// called.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST rather than FIN: nothing is flushed
		}
		c.Close()
	}
}

// Blackhole makes the proxy swallow every byte in both directions while
// keeping the connections open (on is true), as a network partition or a
// hung broker would: only keep-alives notice. Blackhole(false) forwards
// again (what was swallowed is gone; the MQTT sessions through it are
// broken and should be cut).
func (p *Proxy) Blackhole(on bool) { p.blackhole.Store(on) }

// Refuse makes the proxy close new connections as soon as it accepts them
// (on is true) or forward them again (on is false): the broker looks
// unreachable without being stopped.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Accepts returns how many connections the proxy has accepted so far.
func (p *Proxy) Accepts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepts
}

// Close stops the proxy, cuts its connections and waits for its goroutines.
// It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	if !already {
		p.ln.Close()
	}
	p.Cut()
	p.wg.Wait()
}
