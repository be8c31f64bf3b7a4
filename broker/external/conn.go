package external

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

const (
	// stableAfter is how long a connection must last for the next
	// reconnect to start again from ReconnectMin (and at once). A broker
	// that accepts and drops us at once (a duplicate client id, an ACL
	// kick) is retried with growing delays instead of in a tight loop.
	stableAfter = 10 * time.Second
	// disconnectQuiesce is how long paho may take to write DISCONNECT on
	// Close (milliseconds).
	disconnectQuiesce = 250
	// drainWindow is how many buffered messages are in flight at once
	// while the buffer is sent after a reconnect.
	drainWindow = 64
	// subscribeBatch is how many filters go into one SUBSCRIBE packet when
	// subscriptions are restored.
	subscribeBatch = 64
)

// run is the connection loop: connect, serve the connection until it is
// lost, wait, connect again, until Close. Counted in c.wg.
func (c *Client) run() {
	defer c.wg.Done()
	failures := 0
	for c.ctx.Err() == nil {
		began := time.Now()
		pc, lost, session, err := c.connect(c.ctx)
		if c.ctx.Err() != nil {
			if pc != nil {
				pc.Disconnect(disconnectQuiesce)
			}
			return
		}
		if err != nil {
			failures++
			next := c.backoff(failures)
			c.failed(err, failures, next)
			if !c.sleep(next) {
				return
			}
			continue
		}
		c.nConnects.Add(1)
		up := time.Now()
		err = c.serve(pc, lost, failures, session, up.Sub(began))
		if c.ctx.Err() != nil {
			return
		}
		next := time.Duration(0)
		if time.Since(up) >= stableAfter {
			failures = 0
		} else {
			failures++
			next = c.backoff(failures)
		}
		c.mu.Lock()
		buffered := c.out.len()
		c.mu.Unlock()
		c.log.Warn("broker connection lost", "err", err, "buffered", buffered, "next_try", next)
		if !c.sleep(next) {
			return
		}
	}
}

// failed records and logs one failed connection attempt, naming the cause.
func (c *Client) failed(err error, attempt int, next time.Duration) {
	c.nFailures.Add(1)
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
	r := reason(err)
	level, msg := slog.LevelWarn, "broker connect failed"
	switch r {
	case "bad_credentials", "not_authorized":
		level, msg = slog.LevelError, "broker refused the credentials"
	case "tls":
		level, msg = slog.LevelError, "broker tls handshake failed"
	case "unreachable":
		msg = "broker unreachable"
	}
	c.log.Log(context.Background(), level, msg, "reason", r, "err", err, "attempt", attempt, "next_try", next)
}

// backoff returns the delay before attempt n (n ≥ 1): ReconnectMin doubled
// n-1 times, at most ReconnectMax, of which a random half to all.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.ReconnectMin
	for i := 1; i < n && d < c.cfg.ReconnectMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.ReconnectMax)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until Close; it reports whether to go on.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// connect makes one connection attempt. On success it returns the paho
// client, the channel its connection-lost handler reports to and the
// CONNACK's session-present flag.
func (c *Client) connect(ctx context.Context) (paho.Client, chan error, bool, error) {
	lost := make(chan error, 1)
	// Written on paho's connect goroutine, read after the token completes.
	var (
		dialErr error
		stop    func() bool
	)
	o := paho.NewClientOptions()
	o.AddBroker(c.st.url.String())
	o.SetClientID(c.st.clientID)
	o.SetUsername(c.st.user)
	o.SetPassword(c.st.pass)
	o.SetCleanSession(!c.cfg.PersistentSession)
	// Explicit 3.1.1: otherwise paho retries a refused CONNECT as MQTT 3.1,
	// and the broker's answer to that (bad protocol version) hides the real
	// refusal (bad credentials).
	o.SetProtocolVersion(4)
	o.SetAutoReconnect(false) // our loop reconnects: it logs, classifies and re-subscribes
	o.SetConnectRetry(false)
	o.SetResumeSubs(false)
	o.SetKeepAlive(c.cfg.KeepAlive)
	// A PINGRESP may queue behind a flood the broker is still working
	// through: give it a whole keep-alive interval, as the broker gives us
	// one and a half [MQTT-3.1.2-24].
	o.SetPingTimeout(max(c.cfg.KeepAlive, time.Second))
	o.SetConnectTimeout(c.cfg.ConnectTimeout)
	o.SetWriteTimeout(c.cfg.ConnectTimeout)
	// Handlers run on paho's router goroutine in order; ours (route) only
	// hands off to bounded queues, so order is kept and nothing blocks.
	o.SetOrderMatters(true)
	o.SetDefaultPublishHandler(c.route)
	o.SetConnectionLostHandler(func(_ paho.Client, err error) {
		select {
		case lost <- err:
		default:
		}
	})
	if w := c.cfg.Will; w != nil {
		o.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retain)
	}
	o.SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
		conn, err := c.dial(ctx, u)
		if err != nil {
			dialErr = err
			return nil, err
		}
		// Close aborts a handshake in progress.
		stop = context.AfterFunc(ctx, func() { conn.Close() })
		return conn, nil
	})
	pc := paho.NewClient(o)
	tok := pc.Connect()
	<-tok.Done() // bounded: the dial has ctx and ConnectTimeout, the handshake a deadline
	if stop != nil {
		stop()
	}
	if err := tok.Error(); err != nil {
		ct, _ := tok.(*paho.ConnectToken)
		var rc byte
		if ct != nil {
			rc = ct.ReturnCode()
		}
		secure := c.st.tls != nil
		return nil, nil, false, fmt.Errorf("external: connect %s: %w", c.st.addr, classify(dialErr, secure, rc, err))
	}
	session := false
	if ct, ok := tok.(*paho.ConnectToken); ok {
		session = ct.SessionPresent()
	}
	return pc, lost, session, nil
}

// dial opens the transport for one attempt. Errors wrap ErrUnreachable or
// ErrTLS.
func (c *Client) dial(ctx context.Context, u *url.URL) (net.Conn, error) {
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout}
	switch u.Scheme {
	case "tcp", "ssl":
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		if u.Scheme == "tcp" {
			return conn, nil
		}
		tc := tls.Client(conn, c.st.tls)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w: %w", ErrTLS, err)
		}
		return tc, nil
	case "ws", "wss":
		var tc *tls.Config
		if u.Scheme == "wss" {
			tc = c.st.tls
		}
		conn, err := paho.NewWebsocket(u.String(), tc, c.cfg.ConnectTimeout, nil, nil)
		if err != nil {
			if isTLSError(err) {
				return nil, fmt.Errorf("%w: %w", ErrTLS, err)
			}
			return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		return conn, nil
	}
	return nil, fmt.Errorf("%w: scheme %q", ErrBadURL, u.Scheme) // ParseURL allows no other
}

// serve runs one connection: restore the subscriptions, become ready, send
// the buffer, call OnConnect, then wait until the connection is lost or the
// client closes. It returns why the connection ended (nil on Close).
func (c *Client) serve(pc paho.Client, lost chan error, failures int, session bool, took time.Duration) error {
	c.mu.Lock()
	c.live = pc
	down := make(chan struct{})
	c.downCh = down
	c.mu.Unlock()

	stop := make(chan struct{})
	drained := make(chan struct{})
	err := c.resubscribe(pc, lost)
	if err == nil {
		c.mu.Lock()
		c.ready = true
		c.lastErr = nil
		close(c.readyCh)
		c.mu.Unlock()
		c.log.Info("broker connected", "client_id", c.st.clientID, "took", took, "failed_attempts", failures,
			"session_present", session)

		c.wg.Add(1)
		go c.drainLoop(pc, stop, drained, lost)
		c.wake()
		select {
		case c.connected <- struct{}{}:
		default:
		}

		select {
		case err = <-lost:
		case <-c.ctx.Done():
		}
	} else {
		close(drained)
	}

	c.mu.Lock()
	c.live = nil
	if c.ready {
		c.ready = false
		c.readyCh = make(chan struct{})
	}
	close(down)
	c.mu.Unlock()
	close(stop)
	<-drained
	// Clean DISCONNECT on Close (no will); a no-op when paho already lost
	// the connection; after a failed re-subscription or resend it drops a
	// connection we no longer trust.
	pc.Disconnect(disconnectQuiesce)
	return err
}

// lostLater wraps a reason the connection was given up by us.
func lostLater(err error) error { return fmt.Errorf("external: connection dropped: %w", err) }

// resubscribe sends every registered filter to the broker and waits for the
// acknowledgements; with a persistent session it first unsubscribes the
// filters dropped while the broker was away. A filter the broker refuses is
// logged (and stays registered, for the next connection). An error means
// the connection is not usable.
func (c *Client) resubscribe(pc paho.Client, lost <-chan error) error {
	c.subMu.Lock()
	c.mu.Lock()
	all := make(map[string]byte, len(c.filters))
	for f, refs := range c.filters {
		all[f] = refs.max()
	}
	stale := make([]string, 0, len(c.stale))
	for f := range c.stale {
		stale = append(stale, f)
	}
	c.mu.Unlock()
	var toks []paho.Token
	if len(stale) > 0 {
		toks = append(toks, pc.Unsubscribe(stale...))
	}
	batch := make(map[string]byte, subscribeBatch)
	flush := func() {
		if len(batch) > 0 {
			toks = append(toks, pc.SubscribeMultiple(batch, nil))
			batch = make(map[string]byte, subscribeBatch)
		}
	}
	for f, q := range all {
		batch[f] = q
		if len(batch) == subscribeBatch {
			flush()
		}
	}
	flush()
	c.subMu.Unlock()

	timer := time.NewTimer(c.cfg.ConnectTimeout)
	defer timer.Stop()
	for _, tok := range toks {
		select {
		case <-tok.Done():
		case err := <-lost:
			return err
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-timer.C:
			return lostLater(errors.New("no SUBACK for the restored subscriptions"))
		}
		if err := tok.Error(); err != nil {
			return lostLater(fmt.Errorf("restore subscriptions: %w", err))
		}
		if _, ok := tok.(*paho.UnsubscribeToken); ok {
			c.mu.Lock()
			for _, f := range stale {
				delete(c.stale, f)
			}
			c.mu.Unlock()
		}
		if st, ok := tok.(*paho.SubscribeToken); ok {
			for f, code := range st.Result() {
				if code == 0x80 {
					c.log.Error("broker refused a subscription", "filter", f)
				}
			}
		}
	}
	return nil
}

// drainLoop sends the buffer whenever it is kicked, until stop. It closes
// drained when it returns. A send that fails makes it report the
// connection as lost (serve then drops it). Counted in c.wg.
func (c *Client) drainLoop(pc paho.Client, stop <-chan struct{}, drained chan<- struct{}, lost chan<- error) {
	defer c.wg.Done()
	defer close(drained)
	for {
		select {
		case <-c.kick:
		case <-stop:
			return
		}
		if err := c.drain(pc, stop); err != nil {
			if !pc.IsConnectionOpen() {
				// paho is handling the loss and reports its cause
				// (EOF, "pingresp not received", ...) through lost.
				return
			}
			select {
			case lost <- lostLater(err):
			default:
			}
			return
		}
	}
}

// flight is a buffered message handed to paho and not yet acknowledged.
type flight struct {
	e   *entry
	tok paho.Token
}

// drain sends the buffer oldest first, with up to drainWindow messages
// unacknowledged, until it is empty. Messages not acknowledged when the
// connection fails (or at stop) go back to the front of the buffer.
func (c *Client) drain(pc paho.Client, stop <-chan struct{}) error {
	var window []flight
	for {
		for len(window) < drainWindow {
			// Not on a connection paho has lost, even before serve has
			// noticed: a direct Publish whose token failed with it may
			// have just buffered its message and kicked us.
			open := pc.IsConnectionOpen()
			c.mu.Lock()
			var e *entry
			if open && c.live == pc {
				e = c.out.popFront()
			}
			c.draining = e != nil
			c.mu.Unlock()
			if e == nil {
				break
			}
			// Taken out under mu with draining set, handed to paho before
			// draining is cleared: a direct Publish cannot overtake it.
			c.nResent.Add(1)
			window = append(window, flight{e, pc.Publish(e.topic, e.qos, e.retain, e.payload)})
		}
		if len(window) == 0 {
			c.mu.Lock()
			if c.out.len() == 0 && c.idleCh != nil {
				close(c.idleCh)
				c.idleCh = nil
			}
			c.mu.Unlock()
			return nil
		}
		f := window[0]
		select {
		case <-f.tok.Done():
		case <-stop:
			c.requeue(window)
			return nil
		}
		if err := f.tok.Error(); err != nil {
			c.requeue(window)
			return fmt.Errorf("resend %q: %w", f.e.topic, err)
		}
		window = window[1:]
	}
}

// requeue puts unacknowledged messages back at the front of the buffer.
func (c *Client) requeue(window []flight) {
	es := make([]*entry, len(window))
	for i, f := range window {
		es[i] = f.e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = false
	if n := c.out.pushFront(es); n > 0 {
		c.nCoalesced.Add(uint64(n))
	}
	if c.out.len() > 0 && c.idleCh == nil {
		c.idleCh = make(chan struct{})
	}
}

// onConnectLoop calls cfg.OnConnect once per signal from serve, never two
// at a time, until Close. Counted in c.wg.
func (c *Client) onConnectLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.connected:
			c.cfg.OnConnect()
		case <-c.ctx.Done():
			return
		}
	}
}
