package devsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Queue sizes of one connection.
const (
	// inQueue: decrypted frames from the reader to the loop. Full: the
	// reader waits, so a busy loop stops reading (TCP back-pressure).
	inQueue = 8
	// outQueue: encoded messages from the loop to the writer. Full: the
	// loop waits (bounded by WriteTimeout on the writer side).
	outQueue = 32
	// cmdQueue: requests of the Device methods to the loop. Full: the
	// caller waits on its ctx.
	cmdQueue = 8
)

// link is one connection of a Device after the handshake. Three goroutines
// share it: readLoop (owns the frame.Reader), writeLoop (owns the
// frame.Writer, i.e. the outbound IV chain, so encryption order is wire
// order) and loop, on Run's goroutine (owns every protocol counter and all
// state below), plus the optional App goroutine, which only calls Device
// methods.
type link struct {
	// Immutable after newLink.
	d    *Device
	q    quirks
	cfg  *Config
	conn net.Conn
	sess *handshake.Session
	log  *slog.Logger
	ctx  context.Context // ends with the connection; set by run
	g    *errgroup.Group // set by run

	in   chan []byte // readLoop → loop; never closed
	out  chan []byte // loop → writeLoop; never closed
	cmds chan func() // Device methods → loop; never closed

	// Owned by loop.
	nextID           uint16 // the last device message id used
	token            byte   // the last device token used
	serverHello      bool
	up               bool               // the hello exchange is done
	subs             []msg.Subscription // application subscriptions sent on this connection
	appStarted       bool
	describeAnswered bool
	appDue, appCap   time.Time
	appTimer         *time.Timer
	pingSent         bool
	timeWaiters      map[byte]chan<- time.Time
	pingWaiters      map[uint16]chan<- struct{}
}

func newLink(d *Device, conn net.Conn, sess *handshake.Session) *link {
	l := &link{
		d:           d,
		q:           d.q,
		cfg:         &d.cfg,
		conn:        conn,
		sess:        sess,
		log:         d.log.With("remote", conn.RemoteAddr().String()),
		in:          make(chan []byte, inQueue),
		out:         make(chan []byte, outQueue),
		cmds:        make(chan func(), cmdQueue),
		timeWaiters: make(map[byte]chan<- time.Time),
		pingWaiters: make(map[uint16]chan<- struct{}),
	}
	// spark-protocol.md §2.3: the counters are seeded from the salt; the
	// first message (the Hello) uses counter+1.
	if d.q.counterLE {
		l.nextID = binary.LittleEndian.Uint16(sess.Salt[0:2])
	} else {
		l.nextID = binary.BigEndian.Uint16(sess.Salt[0:2])
	}
	if d.q.tokenFromSalt {
		l.token = sess.Salt[2]
	}
	return l
}

// run runs the reader and the writer in an errgroup and the loop in the
// calling goroutine until one of them fails or ctx ends, and returns the
// first failure.
func (l *link) run(ctx context.Context) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(lctx)
	l.g, l.ctx = g, gctx
	stop := context.AfterFunc(gctx, func() { _ = l.conn.Close() })
	defer stop()
	defer l.d.clearLink(l)
	g.Go(l.readLoop)
	g.Go(l.writeLoop)
	err := l.loop()
	loopFirst := gctx.Err() == nil // else the reader or writer failed first
	cancel()
	if gerr := g.Wait(); !loopFirst {
		return gerr
	}
	return err
}

// readLoop reads and decrypts frames and hands copies to the loop.
func (l *link) readLoop() error {
	r := frame.NewReader(bufio.NewReaderSize(l.conn, 1024), l.sess.Key[:], l.sess.IV[:], l.q.maxFrame)
	for {
		p, err := r.ReadFrame()
		if err != nil {
			if l.ctx.Err() != nil {
				return l.ctx.Err()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
				errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrClosedPipe) {
				return fmt.Errorf("%w: %w", ErrPeerClosed, err)
			}
			return fmt.Errorf("devsim: read frame: %w", err)
		}
		select {
		case l.in <- bytes.Clone(p):
		case <-l.ctx.Done():
			return l.ctx.Err()
		}
	}
}

// writeLoop encrypts and writes what the loop queues: it drains the queue
// without blocking, flushes once, then blocks.
func (l *link) writeLoop() error {
	bw := bufio.NewWriterSize(l.conn, 1024)
	w := frame.NewWriter(bw, l.sess.Key[:], l.sess.IV[:], l.q.maxFrame)
	for {
		var b []byte
		select {
		case b = <-l.out:
		case <-l.ctx.Done():
			return l.ctx.Err()
		}
		if err := l.conn.SetWriteDeadline(time.Now().Add(l.cfg.WriteTimeout)); err != nil {
			return fmt.Errorf("devsim: write: %w", err)
		}
		for b != nil {
			if err := w.WriteFrame(b); err != nil {
				return l.writeErr(err)
			}
			select {
			case b = <-l.out:
			default:
				b = nil
			}
		}
		if err := bw.Flush(); err != nil {
			return l.writeErr(err)
		}
	}
}

func (l *link) writeErr(err error) error {
	if l.ctx.Err() != nil {
		return l.ctx.Err()
	}
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrClosedPipe) {
		return fmt.Errorf("%w: %w", ErrPeerClosed, err)
	}
	return fmt.Errorf("devsim: write frame: %w", err)
}

// do runs f on the loop goroutine and returns its error; ErrNotConnected if
// the connection ends first, or ctx's error.
func (l *link) do(ctx context.Context, f func() error) error {
	res := make(chan error, 1)
	select {
	case l.cmds <- func() { res <- f() }:
	case <-l.ctx.Done():
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-l.ctx.Done():
		return ErrNotConnected
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loop is the device's protocol loop: it sends the Hello, waits for the
// server Hello on a Photon, then handles incoming messages, the Device
// methods' requests, the keepalive and the application start.
func (l *link) loop() error {
	ctx := l.ctx
	defer l.stopAppTimer()
	var helloC <-chan time.Time
	if l.q.helloWait > 0 {
		if err := l.sendHello(); err != nil {
			return err
		}
		t := time.NewTimer(l.q.helloWait)
		defer t.Stop()
		helloC = t.C
	} else {
		// The Core waits for nothing: it is connected once its Hello is
		// queued, and becomes so before the Hello can reach the server.
		l.markUp()
		if err := l.sendHello(); err != nil {
			return err
		}
		if err := l.afterHello(); err != nil {
			return err
		}
	}
	var pingC <-chan time.Time
	var pingTimer *time.Timer
	if l.cfg.PingInterval > 0 {
		pingTimer = time.NewTimer(l.cfg.PingInterval)
		defer pingTimer.Stop()
		pingC = pingTimer.C
	}
	for {
		var appC <-chan time.Time
		if l.appTimer != nil {
			appC = l.appTimer.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case p := <-l.in:
			// spark-protocol.md §5: any received message resets the
			// keepalive.
			if pingTimer != nil {
				pingTimer.Reset(l.cfg.PingInterval)
				l.pingSent = false
			}
			if err := l.handle(p); err != nil {
				return err
			}
			if l.serverHello && !l.up {
				helloC = nil
				l.markUp()
				if err := l.afterHello(); err != nil {
					return err
				}
			}
		case f := <-l.cmds:
			f()
		case <-helloC:
			return ErrNoServerHello
		case <-pingC:
			if l.pingSent {
				return ErrPingTimeout
			}
			if err := l.ping(nil); err != nil {
				return err
			}
			l.pingSent = true
			l.d.count(func(s *Stats) { s.PingsOut++ })
			pingTimer.Reset(l.cfg.PingTimeout)
		case <-appC:
			l.appTimer = nil
			if err := l.maybeStartApp(); err != nil {
				return err
			}
		}
	}
}

// markUp makes the connection the Device's current one, once the hello
// exchange is done.
func (l *link) markUp() {
	l.up = true
	l.d.setLink(l)
	l.log.Debug("connected", "firmware", l.cfg.Firmware.String())
}

// afterHello sends the system messages and schedules the application start.
func (l *link) afterHello() error {
	if l.cfg.SystemMessages && l.q.photon {
		if err := l.sendSystemMessages(); err != nil {
			return err
		}
	}
	now := time.Now()
	l.appDue = now.Add(l.cfg.AppStartDelay)
	l.appCap = l.appDue.Add(describeWait)
	return l.maybeStartApp()
}

// sendSystemMessages sends what the recorded Photons send right after the
// server Hello, in the recorded order (session_fixture_photon0*.json).
func (l *link) sendSystemMessages() error {
	if err := l.send(appendEvent(nil, l.newID(), "spark/hardware/max_binary", []byte("102400"), 60, true, l.q.maxEventData)); err != nil {
		return err
	}
	if err := l.send(appendEvent(nil, l.newID(), "spark/hardware/ota_chunk_size", []byte("512"), 60, true, l.q.maxEventData)); err != nil {
		return err
	}
	if err := l.write(msg.NewSubscribe(l.newID(), "spark", false, "")); err != nil {
		return err
	}
	return l.getTime(nil)
}

// maybeStartApp starts the application when it is due, or arms the timer.
func (l *link) maybeStartApp() error {
	if l.appStarted || !l.up {
		return nil
	}
	now := time.Now()
	if now.Before(l.appDue) {
		l.armAppTimer(l.appDue.Sub(now))
		return nil
	}
	if l.cfg.DescribeAtOnceEmpty && !l.describeAnswered && now.Before(l.appCap) {
		l.armAppTimer(l.appCap.Sub(now))
		return nil
	}
	l.stopAppTimer()
	return l.startApp()
}

func (l *link) armAppTimer(d time.Duration) {
	l.stopAppTimer()
	l.appTimer = time.NewTimer(d)
}

func (l *link) stopAppTimer() {
	if l.appTimer != nil {
		l.appTimer.Stop()
		l.appTimer = nil
	}
}

// startApp is the application's setup(): from now on the functions and
// variables exist, the subscriptions are sent and App runs.
func (l *link) startApp() error {
	l.appStarted = true
	_, _, subs := l.d.app()
	for _, s := range subs {
		if err := l.subscribe(s); err != nil {
			return err
		}
	}
	if app := l.cfg.App; app != nil {
		l.g.Go(func() error {
			app(l.ctx, l.d)
			return nil
		})
	}
	return nil
}

// newID uses up the next device message id (spark-protocol.md §4.2).
func (l *link) newID() uint16 {
	l.nextID++
	return l.nextID
}

// newToken uses up the next device token.
func (l *link) newToken() byte {
	l.token++
	return l.token
}

// send queues an encoded message for the writer.
func (l *link) send(b []byte) error {
	select {
	case l.out <- b:
		return nil
	case <-l.ctx.Done():
		return l.ctx.Err()
	}
}

// write encodes m and queues it.
func (l *link) write(m msg.Message) error {
	b, err := m.Encode()
	if err != nil {
		return fmt.Errorf("devsim: encode: %w", err)
	}
	return l.send(b)
}

func (l *link) sendHello() error {
	h := msg.Hello{
		ProductID:      l.q.productID,
		ProductVersion: l.q.productVersion,
		Flags:          l.q.helloFlags,
		PlatformID:     l.q.platformID,
		HasPlatform:    l.q.photon,
	}
	return l.write(msg.NewHello(l.newID(), nil, h.Marshal()))
}

func (l *link) publish(name string, data []byte, ttl uint32, private bool) error {
	if err := l.send(appendEvent(nil, l.newID(), name, data, ttl, private, l.q.maxEventData)); err != nil {
		return err
	}
	l.d.count(func(s *Stats) { s.EventsOut++ })
	return nil
}

func (l *link) subscribe(s msg.Subscription) error {
	if err := l.write(msg.NewSubscribe(l.newID(), s.Prefix, s.MineOnly, s.DeviceID)); err != nil {
		return err
	}
	l.subs = append(l.subs, s)
	return nil
}

// getTime sends a GetTime; ch, if not nil, receives the answer.
func (l *link) getTime(ch chan<- time.Time) error {
	tok := l.newToken()
	if ch != nil {
		l.timeWaiters[tok] = ch
	}
	return l.write(msg.NewGetTime(l.newID(), tok))
}

// ping sends a keepalive ping; ch, if not nil, is told of its ACK.
func (l *link) ping(ch chan<- struct{}) error {
	id := l.newID()
	if ch != nil {
		l.pingWaiters[id] = ch
	}
	return l.write(msg.NewPing(id))
}
