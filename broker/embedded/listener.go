package embedded

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is a mochi listeners.Listener over a net.Listener this package
// opened (so the bound address is known before Start, and ":0" works). Unlike
// mochi's own listeners it owns every goroutine it starts and Close waits
// for them, it gives a new connection ConnectTimeout to send CONNECT (mochi
// sets no deadline before CONNECT), and it keeps accepting after a
// temporary Accept error (such as EMFILE).
// closeGrace is how long Close lets mochi say goodbye to its clients before
// it closes their connections.
const closeGrace = time.Second

type listener struct {
	// Immutable after newListener.
	id             string
	proto          string // tcp, tls or ws
	ln             net.Listener
	log            *slog.Logger
	connectTimeout time.Duration
	writeTimeout   time.Duration
	http           *http.Server // ws only
	upgrader       websocket.Upgrader
	anonymous      bool // no users file: refuse cross-origin WebSocket requests

	wg   sync.WaitGroup // the serve loop and one per connection
	done chan struct{}  // closed by Close

	// Guarded by mu.
	mu        sync.Mutex
	closed    bool
	conns     map[net.Conn]struct{}
	establish listeners.EstablishFn

	// disconnect, when set, replaces the CloseFn mochi hands to Close:
	// it tells this listener's clients that the server is going away.
	disconnect func(listenerID string)
}

func newListener(id, proto string, ln net.Listener, cfg Config) *listener {
	l := &listener{
		id: id, proto: proto, ln: ln,
		log:            cfg.Logger,
		connectTimeout: cfg.ConnectTimeout,
		writeTimeout:   cfg.WriteTimeout,
		anonymous:      cfg.UsersFile == "",
		done:           make(chan struct{}),
		conns:          map[net.Conn]struct{}{},
	}
	if proto == "ws" {
		l.upgrader = websocket.Upgrader{Subprotocols: []string{"mqtt"}, CheckOrigin: l.checkOrigin}
		l.http = &http.Server{
			Handler:           http.HandlerFunc(l.serveWS),
			ReadHeaderTimeout: cfg.ConnectTimeout,
			ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		}
	}
	return l
}

// ID implements listeners.Listener.
func (l *listener) ID() string { return l.id }

// Address implements listeners.Listener.
func (l *listener) Address() string { return l.ln.Addr().String() }

// Protocol implements listeners.Listener.
func (l *listener) Protocol() string { return l.proto }

// Init implements listeners.Listener; the socket is open already.
func (l *listener) Init(*slog.Logger) error { return nil }

// Serve implements listeners.Listener. mochi runs it on a goroutine of its
// own; it returns when Close closes the socket, and Close waits for it.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.establish = establish
	l.wg.Add(1)
	l.mu.Unlock()
	defer l.wg.Done()

	if l.http != nil {
		if err := l.http.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error("mqtt websocket listener stopped", "listener", l.id, "err", err)
		}
		return
	}
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("mqtt accept", "listener", l.id, "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-l.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		backoff = 0
		if !l.track(conn) {
			return
		}
		go l.serveConn(establish, conn) // ends with the connection; Close waits via wg
	}
}

// track registers conn and counts it in wg, or closes it when the listener
// is closed. The wg count of the caller (the serve loop, or the open
// http.Server) keeps Add from racing Close's Wait.
func (l *listener) track(conn net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = conn.Close()
		return false
	}
	l.conns[conn] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *listener) serveConn(establish listeners.EstablishFn, conn net.Conn) {
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		delete(l.conns, conn)
		l.mu.Unlock()
		_ = conn.Close()
	}()
	// mochi replaces this deadline by the keepalive one after CONNECT.
	_ = conn.SetDeadline(time.Now().Add(l.connectTimeout))
	wc := &writeTimeoutConn{Conn: conn, timeout: l.writeTimeout, broken: make(chan struct{})}
	if err := establish(l.id, wc); err != nil && !isClosedErr(err) {
		l.log.Debug("mqtt connection ended", "listener", l.id, "remote", conn.RemoteAddr().String(), "err", err)
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// Close implements listeners.Listener: stop accepting, have mochi
// disconnect this listener's clients, close the connections that had not
// finished CONNECT, and wait for every goroutine.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()

	if l.http != nil {
		_ = l.http.Close() // closes l.ln; upgraded connections are ours
	} else {
		_ = l.ln.Close()
	}
	// mochi writes a DISCONNECT to each client, which blocks on a client
	// that stopped reading (mochi's write deadline is 1.5 × keepalive); after
	// closeGrace the connections are closed under it.
	clientsClosed := make(chan struct{})
	go func() { // owned by Close, which waits for it below
		defer close(clientsClosed)
		if l.disconnect != nil {
			l.disconnect(l.id)
			return
		}
		closeClients(l.id)
	}()
	grace := time.NewTimer(closeGrace)
	select {
	case <-clientsClosed:
	case <-grace.C:
	}
	grace.Stop()

	l.mu.Lock()
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	<-clientsClosed
	l.wg.Wait()
}

// checkOrigin refuses cross-origin WebSocket requests from browsers while
// anonymous loopback access is on: otherwise any web page open on this
// machine could publish to the devices. Non-browser clients send no Origin.
func (l *listener) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || !l.anonymous {
		return true
	}
	_, host, ok := strings.Cut(origin, "://")
	return ok && strings.EqualFold(host, r.Host)
}

// serveWS upgrades a request to a WebSocket and runs the MQTT connection on
// the http.Server's goroutine until it ends.
func (l *listener) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered with an HTTP error
	}
	conn := &wsConn{Conn: ws.NetConn(), ws: ws}
	if !l.track(conn) {
		return
	}
	l.mu.Lock()
	establish := l.establish
	l.mu.Unlock()
	l.serveConn(establish, conn)
}

// wsConn carries an MQTT byte stream in binary WebSocket messages
// ([MQTT-6.0.0-1]); a message may hold any part of a packet.
type wsConn struct {
	net.Conn // the underlying connection: addresses and deadlines
	ws       *websocket.Conn

	r  io.Reader // the current message; owned by the reader (mochi's read loop)
	mu sync.Mutex
}

var errTextFrame = errors.New("embedded: websocket text message (MQTT needs binary)")

// Read implements net.Conn.
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write implements net.Conn: one binary message per call. mochi serialises
// its writes already; the lock keeps gorilla's one-writer rule regardless.
func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close implements net.Conn.
func (c *wsConn) Close() error { return c.ws.Close() }

// writeTimeoutConn gives every write its own deadline and closes the
// connection when one passes. mochi writes under a per-client lock with no
// deadline but its keepalive one (1.5 × keepalive, refreshed by every read),
// and takes the same lock to number each QoS 1 delivery: a client that stops
// reading would hold every publisher to it for that long. Past WriteTimeout
// it is a slow peer and is disconnected (mochi then publishes its will).
type writeTimeoutConn struct {
	net.Conn
	timeout time.Duration
	// broken is closed once a write failed (the connection is closed then):
	// the pacer stops waiting for a client whose writes fail, as mochi
	// drains its queue without a successful write to tell. Never reopened.
	broken chan struct{}
	once   sync.Once
}

// Write implements net.Conn.
func (c *writeTimeoutConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(p)
	if err != nil {
		_ = c.Conn.Close() // a partial write has broken the stream anyway
		c.once.Do(func() { close(c.broken) })
	}
	return n, err
}
