package devsim

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/frame"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// testTimeout bounds every blocking step of a test, so a bug fails instead
// of hanging.
const testTimeout = 10 * time.Second

// allFirmwares lists the simulated firmwares for table tests.
var allFirmwares = []Firmware{Core, Photon07, Photon08}

// fixtureFrame is one recorded frame of a session fixture.
type fixtureFrame struct {
	Direction   string `json:"direction"`
	Test        string `json:"test"`
	Var         string `json:"var"`
	IV          string `json:"iv_hex"`
	Frame       string `json:"frame_hex"`
	CoAP        string `json:"coap_hex"`
	Description string `json:"description"`
}

// sessionFixture holds the fields of session_fixture_*.json the tests use.
type sessionFixture struct {
	Firmware      string         `json:"firmware"`
	ServerPEM     string         `json:"server_private_key_pem"`
	ServerDER     string         `json:"server_public_key_spki_der"`
	DevicePrivDER string         `json:"device_private_key_pkcs1_der"`
	DeviceID      string         `json:"device_id_12"`
	Nonce         string         `json:"server_nonce_40"`
	Block2Plain   string         `json:"handshake_block2_plaintext_214"`
	Blob          string         `json:"server_handshake_blob_384"`
	Frames        []fixtureFrame `json:"frames"`
}

func loadSession(t testing.TB, name string) sessionFixture {
	t.Helper()
	var f sessionFixture
	vectors.Load(t, name, &f)
	if f.ServerDER == "" || f.DevicePrivDER == "" || f.Blob == "" || len(f.Frames) == 0 {
		t.Fatalf("%s: missing fields", name)
	}
	return f
}

func parsePrivPEM(t testing.TB, s string) *rsa.PrivateKey {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatal("no PEM block")
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*rsa.PrivateKey)
}

func parsePrivDER(t testing.TB, s string) *rsa.PrivateKey {
	t.Helper()
	k, err := x509.ParsePKCS1PrivateKey(vectors.Hex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parsePub(t testing.TB, s string) *rsa.PublicKey {
	t.Helper()
	k, err := keys.ParsePublicKey(vectors.Hex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parseID(t testing.TB, s string) keys.DeviceID {
	t.Helper()
	id, err := keys.ParseDeviceID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serverKey returns a test-only RSA-2048 server key (the Photon 0.8
// fixture's, so no test pays for generating one).
func serverKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	serverKeyCache.Lock()
	defer serverKeyCache.Unlock()
	if serverKeyCache.k == nil {
		f := loadSession(t, "session_fixture_photon08.json")
		serverKeyCache.k = parsePrivPEM(t, f.ServerPEM)
	}
	return serverKeyCache.k
}

var serverKeyCache struct {
	sync.Mutex
	k *rsa.PrivateKey
}

// runner is a Device.Run in its own goroutine.
type runner struct {
	cancel   context.CancelFunc
	finished chan struct{} // closed when Run returned
	err      error         // Run's result, valid once finished is closed
}

// run starts d.Run on conn in a goroutine; stopping it is registered as a
// cleanup.
func run(t *testing.T, d *Device, conn net.Conn) *runner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, finished: make(chan struct{})}
	go func() {
		defer close(r.finished)
		r.err = d.Run(ctx, conn)
	}()
	t.Cleanup(func() {
		if err := r.stop(); err != nil && !errors.Is(err, ErrPeerClosed) {
			t.Logf("Run: %v", err)
		}
	})
	return r
}

// stop cancels Run and returns its error.
func (r *runner) stop() error {
	r.cancel()
	select {
	case <-r.finished:
		return r.err
	case <-time.After(testTimeout):
		return errors.New("Run did not return")
	}
}

// wait waits for Run to end by itself and returns its error.
func (r *runner) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.finished:
		return r.err
	case <-time.After(testTimeout):
		t.Fatal("Run did not end")
		return nil
	}
}

// peer is a scripted server built from handshake, frame and msg, on one end
// of a net.Pipe. It is used from the test goroutine only.
type peer struct {
	t    *testing.T
	conn net.Conn
	r    *frame.Reader
	w    *frame.Writer
	sess *handshake.Session
	id   uint16 // the server's message id counter
	tok  byte
}

// newPeer builds a device from cfg (ServerKey and DeviceKey filled in when
// nil), runs it on a pipe and completes the handshake as the server. It
// reads the device Hello and returns it.
func newPeer(t *testing.T, cfg Config) (*peer, *Device, msg.Message, *runner) {
	t.Helper()
	if cfg.ServerKey == nil {
		cfg.ServerKey = &serverKey(t).PublicKey
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = -1
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, hello, rn := startPeer(t, d)
	return p, d, hello, rn
}

// attachPeer runs d against a new peer and returns the peer after the
// device Hello.
func attachPeer(t *testing.T, d *Device) *peer {
	t.Helper()
	p, _, _ := startPeer(t, d)
	return p
}

func startPeer(t *testing.T, d *Device) (*peer, msg.Message, *runner) {
	t.Helper()
	srv, dev := net.Pipe()
	t.Cleanup(func() { _ = srv.Close() })
	rn := run(t, d, dev)
	if err := srv.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	sess, err := handshake.Server(srv, handshake.ServerConfig{
		Key: serverKey(t),
		Lookup: func(id keys.DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
			if id != d.ID() {
				return nil, keys.ErrUnknownDevice
			}
			return d.PublicKey(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{
		t:    t,
		conn: srv,
		r:    frame.NewReader(srv, sess.Key[:], sess.IV[:], frame.HardMaxFrame),
		w:    frame.NewWriter(srv, sess.Key[:], sess.IV[:], frame.HardMaxFrame),
		sess: sess,
		id:   0x1000,
	}
	hello := p.read()
	if hello.Kind() != msg.KindHello {
		t.Fatalf("first device message: got %v, want Hello", hello.Kind())
	}
	return p, hello, rn
}

// read reads and decodes the next device message.
func (p *peer) read() msg.Message {
	p.t.Helper()
	b, err := p.r.ReadFrame()
	if err != nil {
		p.t.Fatalf("peer read: %v", err)
	}
	m, err := msg.Decode(append([]byte(nil), b...))
	if err != nil {
		p.t.Fatalf("peer decode %x: %v", b, err)
	}
	return m
}

// readRaw reads the next device message without decoding it.
func (p *peer) readRaw() []byte {
	p.t.Helper()
	b, err := p.r.ReadFrame()
	if err != nil {
		p.t.Fatalf("peer read: %v", err)
	}
	return append([]byte(nil), b...)
}

// write encodes and sends m.
func (p *peer) write(m msg.Message) {
	p.t.Helper()
	b, err := m.Encode()
	if err != nil {
		p.t.Fatal(err)
	}
	p.writeRaw(b)
}

func (p *peer) writeRaw(b []byte) {
	p.t.Helper()
	if err := p.w.WriteFrame(b); err != nil {
		p.t.Fatalf("peer write: %v", err)
	}
}

func (p *peer) nextID() uint16 { p.id++; return p.id }
func (p *peer) nextTok() byte  { p.tok++; return p.tok }

// hello sends the server Hello.
func (p *peer) hello() { p.write(msg.NewHello(p.nextID(), nil, nil)) }

// connect sends the server Hello and waits until the device is connected.
func (p *peer) connect(d *Device) {
	p.t.Helper()
	p.hello()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := d.WaitConnected(ctx); err != nil {
		p.t.Fatal(err)
	}
}

// readFrameRaw reads one whole frame (length header and ciphertext) from r.
func readFrameRaw(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	b := make([]byte, 2+int(binary.BigEndian.Uint16(hdr[:])))
	copy(b, hdr[:])
	_, err := io.ReadFull(r, b[2:])
	return b, err
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// netPipe returns both ends of a net.Pipe, closed at cleanup.
func netPipe(t *testing.T) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}
