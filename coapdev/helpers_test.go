package coapdev

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// sessionFixture is the part of session_fixture_photon0*.json the tests use.
type sessionFixture struct {
	ServerPEM   string `json:"server_private_key_pem"`
	DeviceDER   string `json:"device_private_key_pkcs1_der"`
	DeviceID    string `json:"device_id_12"`
	Nonce       string `json:"server_nonce_40"`
	Block2      string `json:"handshake_block2_ciphertext_256"`
	Material    string `json:"session_material_40"`
	HelloPaylod string `json:"device_hello_payload"`
	Frames      []struct {
		N           int    `json:"n"`
		Direction   string `json:"direction"`
		IV          string `json:"iv_hex"`
		Frame       string `json:"frame_hex"`
		CoAP        string `json:"coap_hex"`
		Description string `json:"description"`
	} `json:"frames"`
}

// testKeys are the fixture's test-only keys, loaded once per test binary.
type testKeys struct {
	server *rsa.PrivateKey
	device *rsa.PrivateKey
}

var (
	keysOnce sync.Once
	tkeys    testKeys
	tkeysErr error
)

func loadKeys(t testing.TB) testKeys {
	t.Helper()
	keysOnce.Do(func() {
		var f sessionFixture
		vectors.Load(t, "session_fixture_photon08.json", &f)
		tkeys.server, tkeysErr = parseServerPEM(f.ServerPEM)
		if tkeysErr == nil {
			tkeys.device, tkeysErr = x509.ParsePKCS1PrivateKey(vectors.Hex(t, f.DeviceDER))
		}
	})
	if tkeysErr != nil {
		t.Fatal(tkeysErr)
	}
	return tkeys
}

func parseServerPEM(s string) (*rsa.PrivateKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParsePKCS1PrivateKey(b.Bytes)
}

// keyring is a KeyLookup over a map, for tests.
type keyring struct {
	mu   sync.Mutex
	keys map[keys.DeviceID]*rsa.PublicKey
}

func newKeyring() *keyring { return &keyring{keys: map[keys.DeviceID]*rsa.PublicKey{}} }

func (k *keyring) add(id keys.DeviceID, pub *rsa.PublicKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[id] = pub
}

func (k *keyring) lookup(id keys.DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	pub, ok := k.keys[id]
	switch {
	case !ok:
		return nil, keys.ErrUnknownDevice
	case offered != nil && !offered.Equal(pub):
		return nil, keys.ErrKeyMismatch
	}
	return pub, nil
}

// testID returns a distinct device id per i.
func testID(i int) keys.DeviceID {
	var id keys.DeviceID
	copy(id[:], "test")
	binary.BigEndian.PutUint64(id[4:], uint64(i))
	return id
}

// recorder is a Handler that records every call on channels.
type recorder struct {
	started   chan *Session
	events    chan recEvent
	ended     chan recEnd
	described chan msg.Description
}

type recEvent struct {
	s *Session
	e msg.Event
}

type recEnd struct {
	s   *Session
	err error
}

func newRecorder() *recorder {
	return &recorder{
		started:   make(chan *Session, 64),
		events:    make(chan recEvent, 1024),
		ended:     make(chan recEnd, 64),
		described: make(chan msg.Description, 64),
	}
}

func (r *recorder) SessionStarted(s *Session)               { r.started <- s }
func (r *recorder) Event(s *Session, e msg.Event)           { r.events <- recEvent{s, e} }
func (r *recorder) SessionEnded(s *Session, err error)      { r.ended <- recEnd{s, err} }
func (r *recorder) Described(_ *Session, d msg.Description) { r.described <- d }

const waitLong = 10 * time.Second

func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLong):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// waitFor polls cond until it holds or timeout passes (STYLE.md §7: only
// where no event exists).
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testServer is a Server serving on 127.0.0.1:0 until the test ends.
type testServer struct {
	srv  *Server
	addr string
	rec  *recorder
	keys *keyring
	tk   testKeys
	ln   net.Listener
	stop func() error // cancels Serve and returns its error
}

// dial connects to the server: TCP, or a net.Pipe on a pipeListener.
func (ts *testServer) dial(t testing.TB) net.Conn {
	t.Helper()
	if pl, ok := ts.ln.(*pipeListener); ok {
		return pl.dial(t)
	}
	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// pipeListener is a net.Listener of net.Pipe connections: unbuffered, so a
// peer that stops reading blocks the server's writes at once.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial(t testing.TB) net.Conn {
	t.Helper()
	c, s := net.Pipe()
	select {
	case l.conns <- s:
	case <-time.After(waitLong):
		t.Fatal("pipe listener: no Accept")
	}
	return c
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// startServer starts a Server with the fixture server key, a recorder
// handler and a keyring; edit adjusts the Config.
func startServer(t testing.TB, edit func(*Config)) *testServer {
	t.Helper()
	return startServerHooks(t, edit, testHooks{}, nil)
}

// startServerHooks is startServer with test hooks and keys set before
// Serve starts.
func startServerHooks(t testing.TB, edit func(*Config), hooks testHooks, known map[keys.DeviceID]*rsa.PublicKey) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startServerOn(t, ln, edit, hooks, known)
}

// startServerOn is startServerHooks on a given listener.
func startServerOn(t testing.TB, ln net.Listener, edit func(*Config), hooks testHooks, known map[keys.DeviceID]*rsa.PublicKey) *testServer {
	t.Helper()
	tk := loadKeys(t)
	ts := &testServer{rec: newRecorder(), keys: newKeyring(), tk: tk}
	cfg := Config{
		Keys:             ts.keys.lookup,
		ServerKey:        tk.server,
		Handler:          ts.rec,
		Logger:           testLogger(t),
		AppDescribeDelay: time.Hour, // tests trigger the application Describe themselves
		PingInterval:     -1,
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.hooks = hooks
	for id, k := range known {
		ts.keys.add(id, k)
	}
	ts.srv = srv
	ts.ln = ln
	ts.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	var once sync.Once
	var serr error
	ts.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serr = <-errc:
			case <-time.After(waitLong):
				serr = errors.New("Serve did not return")
			}
		})
		return serr
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

// testLogger logs to the test when SPARK2MQTT_TEST_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SPARK2MQTT_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// tdev is a scripted device: the test drives every message itself with
// frame and msg, so it can also misbehave.
type tdev struct {
	t    testing.TB
	conn net.Conn
	hs   *handshake.Session
	r    *frame.Reader
	blk  cipher.Block
	wiv  [frame.BlockSize]byte // the device's outbound IV chain
	id   uint16                // last device message id used
}

// dialDevice connects device id (of kind k) to ts and runs the handshake;
// the key is registered in ts's keyring unless it is already there.
func dialDevice(t testing.TB, ts *testServer, id keys.DeviceID, k handshake.Kind) *tdev {
	t.Helper()
	ts.keys.mu.Lock()
	if _, ok := ts.keys.keys[id]; !ok {
		ts.keys.keys[id] = &ts.tk.device.PublicKey
	}
	ts.keys.mu.Unlock()
	conn := ts.dial(t)
	t.Cleanup(func() { conn.Close() })
	d := &tdev{t: t, conn: conn}
	d.deadline()
	hs, err := handshake.Client(conn, handshake.ClientConfig{
		ServerKey: &ts.tk.server.PublicKey,
		DeviceKey: ts.tk.device,
		DeviceID:  id,
		Kind:      k,
	})
	if err != nil {
		t.Fatalf("device handshake: %v", err)
	}
	d.hs = hs
	d.r = frame.NewReader(conn, hs.Key[:], hs.IV[:], frame.HardMaxFrame)
	d.blk, err = aes.NewCipher(hs.Key[:])
	if err != nil {
		t.Fatal(err)
	}
	d.wiv = hs.IV
	d.id = 0x1000
	return d
}

func (d *tdev) deadline() { d.conn.SetDeadline(time.Now().Add(waitLong)) }

func (d *tdev) next() uint16 { d.id++; return d.id }

// send encodes and writes m.
func (d *tdev) send(m msg.Message) {
	d.t.Helper()
	b, err := m.Encode()
	if err != nil {
		d.t.Fatal(err)
	}
	d.sendPlain(b)
}

func (d *tdev) sendPlain(b []byte) {
	d.t.Helper()
	d.sendRaw(frame.Seal(nil, d.blk, &d.wiv, b))
}

// sendRaw writes bytes as they are.
func (d *tdev) sendRaw(b []byte) {
	d.t.Helper()
	d.deadline()
	if _, err := d.conn.Write(b); err != nil {
		d.t.Fatalf("device write: %v", err)
	}
}

// badPadding returns a frame that decrypts to a block with pad byte 0.
func (d *tdev) badPadding() []byte {
	var p [frame.BlockSize]byte
	p[0] = 0x50
	cipher.NewCBCEncrypter(d.blk, d.wiv[:]).CryptBlocks(p[:], p[:])
	return append([]byte{0, frame.BlockSize}, p[:]...)
}

// recv reads and decodes the next server message.
func (d *tdev) recv() msg.Message {
	d.t.Helper()
	d.deadline()
	p, err := d.r.ReadFrame()
	if err != nil {
		d.t.Fatalf("device read: %v", err)
	}
	m, err := msg.Decode(p)
	if err != nil {
		d.t.Fatalf("device decode %x: %v", p, err)
	}
	m.Token = bytes.Clone(m.Token)
	m.Payload = bytes.Clone(m.Payload)
	for i := range m.Query {
		m.Query[i] = bytes.Clone(m.Query[i])
	}
	return m
}

// expect reads the next message and checks its kind.
func (d *tdev) expect(k msg.Kind) msg.Message {
	d.t.Helper()
	m := d.recv()
	if m.Kind() != k {
		d.t.Fatalf("device got %s %s %s %x (id %#04x), want %s", m.Type, m.Code, m.Kind(), m.Token, m.ID, k)
	}
	return m
}

// expectClosed reads until the server closes the connection.
func (d *tdev) expectClosed() {
	d.t.Helper()
	d.deadline()
	if _, err := io.Copy(io.Discard, d.conn); err != nil && !isReset(err) {
		d.t.Fatalf("device: waiting for close: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// hello sends the device Hello and reads the server Hello.
func (d *tdev) hello() {
	d.t.Helper()
	h := msg.Hello{ProductID: 6, ProductVersion: 1, PlatformID: 6, HasPlatform: d.hs.Kind == handshake.Photon}
	d.send(msg.NewHello(d.next(), nil, h.Marshal()))
	m := d.expect(msg.KindHello)
	if m.Type != msg.NonConfirmable || len(m.Token) != 0 || len(m.Payload) != 0 {
		d.t.Fatalf("server hello %+v, want NON, no token, no payload", m)
	}
}

// answerDescribe reads a Describe and answers it with ACK 2.05 json.
func (d *tdev) answerDescribe(json string) {
	d.t.Helper()
	m := d.expect(msg.KindDescribe)
	if len(m.Token) != 1 || m.Type != msg.Confirmable {
		d.t.Fatalf("describe %+v: want CON with a 1-byte token", m)
	}
	d.send(msg.NewAck(m.ID, m.Token, msg.Content, []byte(json)))
}

// subscribe sends a Subscribe and reads its empty ACK.
func (d *tdev) subscribe(prefix string) {
	d.t.Helper()
	d.send(msg.NewSubscribe(d.next(), prefix, false, ""))
	ack := d.expect(msg.KindEmptyAck)
	if ack.ID != d.id {
		d.t.Fatalf("subscribe ack id %#04x, want %#04x", ack.ID, d.id)
	}
}

const heaterJSON = `{"f":["heater"],"v":{"temp":9,"state":2,"on":1,"name":4}}`

// start runs a device up to a settled description: hello, empty Describe,
// a Subscribe to "app/" (the application runs), the application Describe
// answered with desc. It returns the server's Session.
func (d *tdev) start(ts *testServer, desc string) *Session {
	d.t.Helper()
	d.hello()
	d.answerDescribe(`{"f":[],"v":{}}`)
	d.subscribe("app/")
	d.answerDescribe(desc)
	var s *Session
	waitFor(d.t, waitLong, "session", func() bool {
		s = ts.srv.Session(d.hs.DeviceID)
		if s == nil {
			return false
		}
		_, app := s.Description()
		return app
	})
	return s
}

// sessionEnd waits for the SessionEnded of s and returns its reason.
func (ts *testServer) sessionEnd(t testing.TB, s *Session) CloseReason {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(waitLong):
		t.Fatal("session did not end")
	}
	var se *SessionError
	if !errors.As(s.Err(), &se) {
		t.Fatalf("Err() = %v, want *SessionError", s.Err())
	}
	return se.Reason
}

// failures returns the handshake failure count for reason.
func (ts *testServer) failures(r CloseReason) uint64 {
	return ts.srv.Stats().HandshakesFailed[r.String()]
}

// sendQuiet writes one frame and returns the error, for device goroutines.
func (d *tdev) sendQuiet(b []byte) error {
	_, err := d.conn.Write(frame.Seal(nil, d.blk, &d.wiv, b))
	return err
}
