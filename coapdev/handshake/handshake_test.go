package handshake

import (
	"bytes"
	"crypto/rsa"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// world is a server key, a device and a key store for end-to-end tests.
type world struct {
	priv        *rsa.PrivateKey
	dev         *rsa.PrivateKey
	other       *rsa.PrivateKey // a second device key
	otherServer *rsa.PrivateKey // another server's key (session_fixture_photon07.json)
	id          keys.DeviceID
	dir         string
}

func newWorld(t *testing.T) world {
	t.Helper()
	v := loadGenerated(t)
	var f fixtureDevice
	loadFixture(t, &f)
	id, err := keys.ParseDeviceID(v.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	var p photonSession
	vectors.Load(t, "session_fixture_photon07.json", &p)
	need(t, "session_fixture_photon07.json", p.ServerPEM)
	return world{
		otherServer: privPEM(t, p.ServerPEM),
		priv:        privPEM(t, v.ServerPEM), dev: privDER(t, v.DevicePrivDER), other: privDER(t, f.A.DevicePrivDER),
		id: id, dir: t.TempDir(),
	}
}

func (w world) store(t *testing.T, mode keys.Mode) *keys.Store {
	t.Helper()
	s, err := keys.OpenStore(w.dir, mode)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (w world) client(kind Kind, dev *rsa.PrivateKey) ClientConfig {
	return ClientConfig{ServerKey: &w.priv.PublicKey, DeviceKey: dev, DeviceID: w.id, Kind: kind}
}

// handshake runs Client and Server over a net.Pipe.
func handshake(t *testing.T, scfg ServerConfig, ccfg ClientConfig) (srv, cli *Session, serr, cerr error) {
	t.Helper()
	sc, dc := pipe(t)
	type result struct {
		s   *Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := Client(dc, ccfg)
		_ = dc.Close()
		done <- result{s, err}
	}()
	srv, serr = Server(sc, scfg)
	_ = sc.Close()
	r := <-done
	return srv, r.s, serr, r.err
}

func sameSession(t *testing.T, srv, cli *Session) {
	t.Helper()
	if srv.Key != cli.Key || srv.IV != cli.IV || srv.Salt != cli.Salt {
		t.Error("server and client derived different session material")
	}
	if srv.DeviceID != cli.DeviceID || srv.Kind != cli.Kind {
		t.Errorf("server sees %v %v, client is %v %v", srv.DeviceID, srv.Kind, cli.DeviceID, cli.Kind)
	}
	if (srv.Offered == nil) != (cli.Offered == nil) || (srv.Offered != nil && !srv.Offered.Equal(cli.Offered)) {
		t.Error("offered keys differ")
	}
}

func TestEndToEndPipe(t *testing.T) {
	for _, kind := range []Kind{Core, Photon} {
		t.Run(kind.String(), func(t *testing.T) {
			w := newWorld(t)
			st := w.store(t, keys.Strict)
			if err := st.Add(w.id, &w.dev.PublicKey); err != nil {
				t.Fatal(err)
			}
			srv, cli, serr, cerr := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(kind, w.dev))
			if serr != nil || cerr != nil {
				t.Fatalf("server %v, client %v", serr, cerr)
			}
			sameSession(t, srv, cli)
			if srv.Kind != kind {
				t.Errorf("got kind %v, want %v", srv.Kind, kind)
			}
		})
	}
}

func TestEndToEndTCP(t *testing.T) {
	w := newWorld(t)
	st := w.store(t, keys.TOFU)
	if err := st.Add(w.id, &w.dev.PublicKey); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		s   *Session
		err error
	}
	results := make(chan result)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(results)
				return
			}
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			s, err := Server(c, ServerConfig{Key: w.priv, Lookup: st.Lookup})
			_ = c.Close()
			results <- result{s, err}
		}
	}()
	for _, kind := range []Kind{Core, Photon, Photon, Core} {
		t.Run(kind.String(), func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			cli, cerr := Client(c, w.client(kind, w.dev))
			r := <-results
			if r.err != nil || cerr != nil {
				t.Fatalf("server %v, client %v", r.err, cerr)
			}
			sameSession(t, r.s, cli)
		})
	}
	_ = ln.Close()
	for range results {
	}
}

func TestShortBlock2(t *testing.T) {
	w := newWorld(t)
	for _, tt := range []struct {
		n    int
		want error
	}{{0, io.EOF}, {100, io.ErrUnexpectedEOF}, {255, io.ErrUnexpectedEOF}} {
		t.Run("after "+strconv.Itoa(tt.n)+" bytes", func(t *testing.T) {
			_, err, perr := serveAgainst(t, ServerConfig{Key: w.priv, Lookup: staticLookup(w.id, &w.dev.PublicKey)},
				func(c net.Conn) error {
					if _, err := io.ReadFull(c, make([]byte, NonceSize)); err != nil {
						return err
					}
					_, err := c.Write(make([]byte, tt.n))
					return err // then close
				})
			if perr != nil {
				t.Fatal(perr)
			}
			if !errors.Is(err, ErrShortRead) || !errors.Is(err, tt.want) {
				t.Errorf("after %d bytes: got %v, want ErrShortRead wrapping %v", tt.n, err, tt.want)
			}
		})
	}
	t.Run("deadline", func(t *testing.T) {
		sc, dc := pipe(t)
		go func() { _, _ = io.ReadFull(dc, make([]byte, NonceSize)) }() // then silence
		_ = sc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := Server(sc, ServerConfig{Key: w.priv, Lookup: staticLookup(w.id, nil)})
		if !errors.Is(err, ErrShortRead) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("got %v, want ErrShortRead wrapping os.ErrDeadlineExceeded", err)
		}
	})
}

// TestBadBlock2: every way block 2 can be wrong, with the error it gives.
func TestBadBlock2(t *testing.T) {
	w := newWorld(t)
	devDER, err := keys.DevicePublicDER(&w.dev.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	garbledKey := bytes.Clone(devDER)
	garbledKey[3] ^= 0x01 // inner SEQUENCE tag
	topBitClear := bytes.Clone(devDER)
	topBitClear[29] &= 0x7f // modulus no longer 1024 bits: not the DER of any key
	wrongE := bytes.Clone(devDER)
	wrongE[len(wrongE)-1] = 0x03 // e = 0x010003
	pub := &w.priv.PublicKey

	tests := []struct {
		name  string
		block func(nonce []byte) []byte
		want  error
		hasID bool
	}{
		{"garbage", func([]byte) []byte { return bytes.Repeat([]byte{0x5a}, Block2Size) }, ErrDecrypt, false},
		{"zeros", func([]byte) []byte { return make([]byte, Block2Size) }, ErrDecrypt, false},
		{"modulus", func([]byte) []byte { return w.priv.N.Bytes() }, ErrDecrypt, false},
		{"plaintext 51", func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:11])) }, ErrDecrypt, false},
		{"plaintext 40", func(n []byte) []byte { return encryptTo(t, pub, n) }, ErrDecrypt, false},
		{"plaintext 0", func([]byte) []byte { return encryptTo(t, pub, nil) }, ErrDecrypt, false},
		{"wrong nonce", func(n []byte) []byte {
			bad := bytes.Clone(n)
			bad[39] ^= 1
			return encryptTo(t, pub, cat(bad, w.id[:]))
		}, ErrBadNonce, false},
		{"wrong nonce photon", func(n []byte) []byte {
			return encryptTo(t, pub, cat(make([]byte, NonceSize), w.id[:], devDER))
		}, ErrBadNonce, false},
		{"encrypted to another key", func(n []byte) []byte {
			return encryptTo(t, &w.otherServer.PublicKey, cat(n, w.id[:]))
		}, ErrDecrypt, false},
		{"garbled offered key", func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:], garbledKey)) }, ErrBadKey, true},
		{"offered key top bit clear", func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:], topBitClear)) }, ErrBadKey, true},
		{"offered key e != 65537", func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:], wrongE)) }, ErrBadKey, true},
		{"offered key cut short", func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:], devDER[:100])) }, ErrBadKey, true},
		{"one extra byte", func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:], []byte{0})) }, ErrBadKey, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := w.store(t, keys.TOFU)
			_, err, perr := serveAgainst(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, rawDevice(tt.block))
			if perr != nil {
				t.Fatal(perr)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			var de *DeviceError
			if got := errors.As(err, &de); got != tt.hasID || (got && de.ID != w.id) {
				t.Errorf("DeviceError: got %v %v, want %v with id %v", got, de, tt.hasID, w.id)
			}
			if entries, _ := st.List(); len(entries) != 0 {
				t.Errorf("a bad block changed the store: %v", entries)
			}
		})
	}
	t.Run("longer than 214 is accepted", func(t *testing.T) {
		st := w.store(t, keys.Strict)
		_ = st.Add(w.id, &w.dev.PublicKey)
		s, err, perr := serveAgainst(t, ServerConfig{Key: w.priv, Lookup: st.Lookup},
			rawDevice(func(n []byte) []byte { return encryptTo(t, pub, cat(n, w.id[:], devDER, []byte("extra"))) }))
		if err != nil || perr != nil || s.Kind != Photon {
			t.Errorf("got %v %v", err, perr)
		}
	})
}

func TestParseBlock2Lengths(t *testing.T) {
	w := newWorld(t)
	nonce := make([]byte, NonceSize)
	good := encryptTo(t, &w.priv.PublicKey, cat(nonce, w.id[:]))
	for _, b := range [][]byte{nil, good[:255], append(bytes.Clone(good), 0), good[1:]} {
		if _, _, err := ParseBlock2(w.priv, nonce, b); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%d bytes: got %v, want ErrDecrypt", len(b), err)
		}
	}
	if _, _, err := ParseBlock2(w.priv, nonce[:39], good); !errors.Is(err, ErrBadNonce) {
		t.Errorf("39-byte nonce: got %v, want ErrBadNonce", err)
	}
	id, offered, err := ParseBlock2(w.priv, nonce, good)
	if err != nil || id != w.id || offered != nil {
		t.Errorf("good block: got %v %v %v", id, offered, err)
	}
}

func TestLookupOutcomes(t *testing.T) {
	t.Run("strict unknown core", func(t *testing.T) {
		w := newWorld(t)
		st := w.store(t, keys.Strict)
		_, _, serr, cerr := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Core, w.dev))
		if !errors.Is(serr, keys.ErrUnknownDevice) {
			t.Errorf("got %v, want keys.ErrUnknownDevice", serr)
		}
		if !errors.Is(cerr, ErrShortRead) {
			t.Errorf("client: got %v, want ErrShortRead (the server closes)", cerr)
		}
		if entries, _ := st.List(); len(entries) != 0 {
			t.Errorf("got %v, want an empty store", entries)
		}
	})
	t.Run("strict unknown photon", func(t *testing.T) {
		w := newWorld(t)
		st := w.store(t, keys.Strict)
		for range 2 { // the candidate is never trusted by itself
			_, _, serr, _ := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Photon, w.dev))
			if !errors.Is(serr, keys.ErrUnknownDevice) {
				t.Fatalf("got %v, want keys.ErrUnknownDevice", serr)
			}
			var de *DeviceError
			if !errors.As(serr, &de) || de.ID != w.id {
				t.Errorf("got %v, want a DeviceError for %v", serr, w.id)
			}
		}
		cand := filepath.Join(w.dir, w.id.String()+"_handshake.pub.pem")
		b, err := os.ReadFile(cand)
		if err != nil {
			t.Fatalf("no candidate saved: %v", err)
		}
		if k, err := keys.ParsePublicKey(b); err != nil || !k.Equal(&w.dev.PublicKey) {
			t.Errorf("candidate: %v", err)
		}
		if _, err := os.Stat(filepath.Join(w.dir, w.id.String()+".pub.pem")); err == nil {
			t.Error("the offered key was trusted")
		}
		// After an operator accepts it, the device gets in.
		if err := st.Accept(w.id); err != nil {
			t.Fatal(err)
		}
		srv, cli, serr, cerr := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Photon, w.dev))
		if serr != nil || cerr != nil {
			t.Fatalf("after Accept: server %v, client %v", serr, cerr)
		}
		sameSession(t, srv, cli)
	})
	t.Run("known id, different key", func(t *testing.T) {
		w := newWorld(t)
		st := w.store(t, keys.Strict)
		_ = st.Add(w.id, &w.dev.PublicKey)
		_, _, serr, _ := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Photon, w.other))
		if !errors.Is(serr, keys.ErrKeyMismatch) {
			t.Errorf("got %v, want keys.ErrKeyMismatch", serr)
		}
	})
	t.Run("core with the wrong key", func(t *testing.T) {
		// A Core offers no key: the server encrypts to the stored key and
		// the impostor cannot open it.
		w := newWorld(t)
		st := w.store(t, keys.Strict)
		_ = st.Add(w.id, &w.dev.PublicKey)
		srv, _, serr, cerr := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Core, w.other))
		if serr != nil || srv == nil {
			t.Fatalf("server: %v", serr)
		}
		if !errors.Is(cerr, ErrDecrypt) {
			t.Errorf("client: got %v, want ErrDecrypt", cerr)
		}
	})
	t.Run("tofu", func(t *testing.T) {
		w := newWorld(t)
		st := w.store(t, keys.TOFU)
		srv, cli, serr, cerr := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Photon, w.dev))
		if serr != nil || cerr != nil {
			t.Fatalf("first key: server %v, client %v", serr, cerr)
		}
		sameSession(t, srv, cli)
		if k, err := st.Lookup(w.id, nil); err != nil || !k.Equal(&w.dev.PublicKey) {
			t.Errorf("first key not recorded: %v", err)
		}
		_, _, serr, _ = handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Photon, w.other))
		if !errors.Is(serr, keys.ErrKeyMismatch) {
			t.Errorf("different key: got %v, want keys.ErrKeyMismatch", serr)
		}
		// The recorded device, as a Core-style client, still gets in.
		if _, _, serr, cerr := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Core, w.dev)); serr != nil || cerr != nil {
			t.Errorf("recorded device: server %v, client %v", serr, cerr)
		}
	})
	t.Run("tofu unknown core", func(t *testing.T) {
		w := newWorld(t)
		st := w.store(t, keys.TOFU)
		_, _, serr, _ := handshake(t, ServerConfig{Key: w.priv, Lookup: st.Lookup}, w.client(Core, w.dev))
		if !errors.Is(serr, keys.ErrUnknownDevice) {
			t.Errorf("got %v, want keys.ErrUnknownDevice", serr)
		}
	})
	t.Run("lookup returns a non-device key", func(t *testing.T) {
		w := newWorld(t)
		_, _, serr, _ := handshake(t, ServerConfig{Key: w.priv, Lookup: staticLookup(w.id, &w.priv.PublicKey)}, w.client(Core, w.dev))
		var de *DeviceError
		if !errors.Is(serr, ErrBadKey) || !errors.As(serr, &de) {
			t.Errorf("got %v, want a DeviceError wrapping ErrBadKey", serr)
		}
	})
}

func TestServerFailures(t *testing.T) {
	w := newWorld(t)
	lookup := staticLookup(w.id, &w.dev.PublicKey)
	t.Run("config", func(t *testing.T) {
		for _, cfg := range []ServerConfig{{}, {Key: w.priv}, {Lookup: lookup}} {
			if _, err := Server(bytes.NewBuffer(nil), cfg); err == nil {
				t.Error("got nil error for an incomplete config")
			}
		}
	})
	t.Run("rand fails", func(t *testing.T) {
		if _, err := Server(bytes.NewBuffer(nil), ServerConfig{Key: w.priv, Lookup: lookup, Rand: fixedRand(make([]byte, 10))}); err == nil {
			t.Error("got nil error with an exhausted Rand")
		}
	})
	t.Run("rand fails for the material", func(t *testing.T) {
		_, err, _ := serveAgainst(t, ServerConfig{Key: w.priv, Lookup: lookup, Rand: fixedRand(make([]byte, NonceSize))},
			rawDevice(func(n []byte) []byte { return encryptTo(t, &w.priv.PublicKey, cat(n, w.id[:])) }))
		if err == nil {
			t.Error("got nil error with an exhausted Rand")
		}
	})
	t.Run("peer gone before the answer", func(t *testing.T) {
		_, err, perr := serveAgainst(t, ServerConfig{Key: w.priv, Lookup: lookup}, func(c net.Conn) error {
			nonce := make([]byte, NonceSize)
			if _, err := io.ReadFull(c, nonce); err != nil {
				return err
			}
			_, err := c.Write(encryptTo(t, &w.priv.PublicKey, cat(nonce, w.id[:])))
			return err // and close at once
		})
		var de *DeviceError
		if perr != nil || !errors.As(err, &de) || !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("got %v (peer %v), want a DeviceError wrapping io.ErrClosedPipe", err, perr)
		}
	})
	t.Run("peer gone before the nonce", func(t *testing.T) {
		sc, dc := pipe(t)
		_ = dc.Close()
		if _, err := Server(sc, ServerConfig{Key: w.priv, Lookup: lookup}); err == nil {
			t.Error("got nil error writing to a closed conn")
		}
	})
}

func TestClientFailures(t *testing.T) {
	w := newWorld(t)
	half := &rsa.PublicKey{N: new(big.Int).Rsh(w.priv.N, 1), E: 65537}
	for _, tt := range []struct {
		name string
		cfg  ClientConfig
		want error
	}{
		{"no keys", ClientConfig{}, nil},
		{"server key 1024", ClientConfig{ServerKey: &w.dev.PublicKey, DeviceKey: w.dev}, ErrBadKey},
		{"server key 2047", ClientConfig{ServerKey: half, DeviceKey: w.dev}, ErrBadKey},
		{"core device key 2048", ClientConfig{ServerKey: &w.priv.PublicKey, DeviceKey: w.priv, Kind: Core}, ErrBadKey},
		{"photon device key 2048", ClientConfig{ServerKey: &w.priv.PublicKey, DeviceKey: w.priv, Kind: Photon}, ErrBadKey},
		{"unknown kind", ClientConfig{ServerKey: &w.priv.PublicKey, DeviceKey: w.dev, Kind: 9}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Client(bytes.NewBuffer(nil), tt.cfg)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}

	// A server that answers with a tampered blob.
	tamper := func(t *testing.T, edit func(blob []byte) []byte) error {
		t.Helper()
		sc, dc := pipe(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer sc.Close()
			nonce := make([]byte, NonceSize)
			_, _ = sc.Write(nonce)
			if _, err := io.ReadFull(sc, make([]byte, Block2Size)); err != nil {
				return
			}
			blob, err := SealSessionKey(nil, w.priv, &w.dev.PublicKey, bytes.Repeat([]byte{7}, MaterialSize))
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = sc.Write(edit(blob))
		}()
		_, err := Client(dc, w.client(Photon, w.dev))
		_ = dc.Close()
		<-done
		return err
	}
	for _, tt := range []struct {
		name string
		edit func([]byte) []byte
		want error
	}{
		{"untouched", func(b []byte) []byte { return b }, nil},
		{"signature flipped", func(b []byte) []byte { b[300] ^= 1; return b }, ErrBadSignature},
		{"signature of another C", func(b []byte) []byte { copy(b[SessionKeySize:], make([]byte, SignatureSize)); return b }, ErrBadSignature},
		{"session key flipped", func(b []byte) []byte { b[5] ^= 1; return b }, ErrDecrypt},
		{"cut short", func(b []byte) []byte { return b[:383] }, ErrShortRead},
		{"nothing", func([]byte) []byte { return nil }, ErrShortRead},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tamper(t, tt.edit)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	t.Run("short nonce", func(t *testing.T) {
		sc, dc := pipe(t)
		go func() {
			_, _ = sc.Write(make([]byte, 10))
			_ = sc.Close()
		}()
		if _, err := Client(dc, w.client(Core, w.dev)); !errors.Is(err, ErrShortRead) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("got %v, want ErrShortRead", err)
		}
	})
}

func TestOpenSessionKeyLength(t *testing.T) {
	w := newWorld(t)
	if _, err := OpenSessionKey(w.dev, &w.priv.PublicKey, make([]byte, 383)); !errors.Is(err, ErrDecrypt) {
		t.Errorf("got %v, want ErrDecrypt", err)
	}
	// A C that decrypts, but not to 40 bytes.
	c := encryptTo(t, &w.dev.PublicKey, make([]byte, 39))
	if _, err := OpenSessionKey(w.dev, &w.priv.PublicKey, cat(c, make([]byte, SignatureSize))); !errors.Is(err, ErrDecrypt) {
		t.Errorf("39-byte material: got %v, want ErrDecrypt", err)
	}
}

func TestSealSessionKey(t *testing.T) {
	w := newWorld(t)
	if _, err := SealSessionKey(nil, w.priv, &w.dev.PublicKey, make([]byte, 39)); err == nil {
		t.Error("39-byte material: got nil error")
	}
	if _, err := SealSessionKey(nil, w.priv, &w.priv.PublicKey, make([]byte, MaterialSize)); !errors.Is(err, ErrBadKey) {
		t.Errorf("2048-bit device key: got %v, want ErrBadKey", err)
	}
	blob, err := SealSessionKey(nil, w.priv, &w.dev.PublicKey, make([]byte, MaterialSize))
	if err != nil || len(blob) != ServerBlobSize {
		t.Fatalf("got %d bytes, %v", len(blob), err)
	}
}

func TestStrings(t *testing.T) {
	for k, want := range map[Kind]string{Core: "core", Photon: "photon", 5: "kind(5)"} {
		if got := k.String(); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
	e := &DeviceError{ID: keys.DeviceID{0xab}, Err: keys.ErrUnknownDevice}
	if got, want := e.Error(), "handshake: device ab0000000000000000000000: keys: unknown device"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestChunkedBlock2: block 2 arriving in pieces (the reference's one-read
// bug, spark-protocol.md §2.6) gives the same session as one write.
func TestChunkedBlock2(t *testing.T) {
	w := newWorld(t)
	v := loadGenerated(t)
	nonce := vectors.Hex(t, v.Nonce)
	material := vectors.Hex(t, v.Material)
	block := vectors.Hex(t, v.PhotonCipher)
	for _, size := range []int{1, 7, 100, 255} {
		t.Run("chunks of "+strconv.Itoa(size), func(t *testing.T) {
			s, err, perr := serveAgainst(t, ServerConfig{Key: w.priv, Lookup: staticLookup(w.id, &w.dev.PublicKey), Rand: fixedRand(nonce, material)},
				func(c net.Conn) error {
					if _, err := io.ReadFull(c, make([]byte, NonceSize)); err != nil {
						return err
					}
					for rest := block; len(rest) > 0; {
						n := min(size, len(rest))
						if _, err := c.Write(rest[:n]); err != nil {
							return err
						}
						rest = rest[n:]
					}
					_, err := io.ReadFull(c, make([]byte, ServerBlobSize))
					return err
				})
			if err != nil || perr != nil {
				t.Fatalf("server %v, device %v", err, perr)
			}
			checkSession(t, s, material, material[:16], material[16:32], material[32:])
		})
	}
}
