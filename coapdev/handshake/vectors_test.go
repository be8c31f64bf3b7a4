package handshake

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// checkSession compares a Session's key, IV and salt with the vector's
// split of the material (spark-protocol.md §2.3).
func checkSession(t *testing.T, s *Session, material, key, iv, salt []byte) {
	t.Helper()
	if !bytes.Equal(key, material[0:16]) || !bytes.Equal(iv, material[16:32]) || !bytes.Equal(salt, material[32:40]) {
		t.Fatal("vector: key/iv/salt are not material[0:16], [16:32], [32:40]")
	}
	if !bytes.Equal(s.Key[:], key) {
		t.Errorf("key: got %x, want %x", s.Key, key)
	}
	if !bytes.Equal(s.IV[:], iv) {
		t.Errorf("iv: got %x, want %x", s.IV, iv)
	}
	if !bytes.Equal(s.Salt[:], salt) {
		t.Errorf("salt: got %x, want %x", s.Salt, salt)
	}
}

// TestFixtureDevice: handshake_fixture_device.json, the device library's
// own fixture: the device key opens the session key and the server's raw
// PKCS#1 v1.5 type-1 signature (no DigestInfo) verifies.
func TestFixtureDevice(t *testing.T) {
	var v fixtureDevice
	vectors.Load(t, "handshake_fixture_device.json", &v)
	a := v.A
	need(t, "handshake_fixture_device.json", a.DevicePrivDER, a.ServerDER, a.Encrypted, a.Material, a.Key, a.IV,
		a.Salt, a.HMAC, a.Signature, a.RawPublicOp, a.DeviceID)
	dev := privDER(t, a.DevicePrivDER)
	srv := pubDER(t, a.ServerDER)
	c := vectors.Hex(t, a.Encrypted)
	sig := vectors.Hex(t, a.Signature)
	material := vectors.Hex(t, a.Material)
	hmac := vectors.Hex(t, a.HMAC)

	t.Run("decrypt", func(t *testing.T) {
		m, err := decryptPKCS1v15(dev, c)
		if err != nil || !bytes.Equal(m, material) {
			t.Errorf("got %x %v, want %x", m, err, material)
		}
	})
	t.Run("hmac", func(t *testing.T) {
		if got := sessionMAC(material, c); !bytes.Equal(got, hmac) {
			t.Errorf("got %x, want %x", got, hmac)
		}
	})
	t.Run("signature", func(t *testing.T) {
		if !a.Verifies {
			t.Fatal("vector says the signature does not verify")
		}
		if err := rsa.VerifyPKCS1v15(srv, crypto.Hash(0), hmac, sig); err != nil {
			t.Errorf("VerifyPKCS1v15(hash 0): %v", err)
		}
		// The public operation gives 00 01 FF..FF 00 ‖ hmac, no DigestInfo.
		em := new(big.Int).Exp(new(big.Int).SetBytes(sig), big.NewInt(int64(srv.E)), srv.N).FillBytes(make([]byte, 256))
		if want := vectors.Hex(t, a.RawPublicOp); !bytes.Equal(em, want) {
			t.Errorf("raw public op: got %x, want %x", em, want)
		}
		if !bytes.Equal(em[256-21:], append([]byte{0}, hmac...)) {
			t.Error("the padded block does not end in 00 ‖ hmac")
		}
	})
	t.Run("open", func(t *testing.T) {
		m, err := OpenSessionKey(dev, srv, cat(c, sig))
		if err != nil {
			t.Fatal(err)
		}
		s := newSession(deviceID(t, a.DeviceID), Core, nil, m)
		checkSession(t, s, material, vectors.Hex(t, a.Key), vectors.Hex(t, a.IV), vectors.Hex(t, a.Salt))
	})
}

// TestGeneratedServer: handshake_generated.json on the server side. The
// server, given the vector's key and its nonce and material through Rand,
// completes the handshake against the recorded Core and Photon block-2
// ciphertexts. C is a random RSA v1.5 instance (the vector says so), so
// the 384 bytes are checked by structure; the deterministic signature is
// checked byte for byte over the vector's C.
func TestGeneratedServer(t *testing.T) {
	v := loadGenerated(t)
	priv := privPEM(t, v.ServerPEM)
	dev := privDER(t, v.DevicePrivDER)
	id, _ := keys.ParseDeviceID(v.DeviceID)
	nonce := vectors.Hex(t, v.Nonce)
	material := vectors.Hex(t, v.Material)
	if der, err := keys.PublicDER(&priv.PublicKey); err != nil || !bytes.Equal(der, vectors.Hex(t, v.ServerDER)) {
		t.Fatalf("server key does not match its DER: %v", err)
	}

	for _, tt := range []struct {
		name   string
		kind   Kind
		plain  string
		cipher string
	}{
		{"core", Core, v.CorePlain, v.CoreCipher},
		{"photon", Photon, v.PhotonPlain, v.PhotonCipher},
	} {
		t.Run(tt.name, func(t *testing.T) {
			block := vectors.Hex(t, tt.cipher)
			// The recorded plaintext is what ParseBlock2 sees.
			pt, err := decryptPKCS1v15(priv, block)
			if err != nil || !bytes.Equal(pt, vectors.Hex(t, tt.plain)) {
				t.Fatalf("block 2 plaintext: got %x %v", pt, err)
			}
			var blob []byte
			s, err, perr := serveAgainst(t, ServerConfig{
				Key: priv, Lookup: staticLookup(id, &dev.PublicKey), Rand: fixedRand(nonce, material),
			}, func(c net.Conn) error {
				got := make([]byte, NonceSize)
				if _, err := io.ReadFull(c, got); err != nil {
					return err
				}
				if !bytes.Equal(got, nonce) {
					t.Errorf("nonce: got %x, want %x", got, nonce)
				}
				if _, err := c.Write(block); err != nil {
					return err
				}
				blob = make([]byte, ServerBlobSize)
				_, err := io.ReadFull(c, blob)
				return err
			})
			if err != nil || perr != nil {
				t.Fatalf("server %v, device %v", err, perr)
			}
			if s.DeviceID != id || s.Kind != tt.kind {
				t.Errorf("got %v %v, want %v %v", s.DeviceID, s.Kind, id, tt.kind)
			}
			if (s.Offered != nil) != (tt.kind == Photon) || (s.Offered != nil && !s.Offered.Equal(&dev.PublicKey)) {
				t.Errorf("offered key: got %v", s.Offered)
			}
			checkSession(t, s, material, vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))
			// Structure of the 384 bytes: the device key opens C to the
			// material and the signature over HMAC(M, C) verifies.
			m, err := OpenSessionKey(dev, &priv.PublicKey, blob)
			if err != nil || !bytes.Equal(m, material) {
				t.Errorf("the device cannot open the server's blob: %x %v", m, err)
			}
			sig, _ := rsa.SignPKCS1v15(nil, priv, 0, sessionMAC(material, blob[:SessionKeySize]))
			if !bytes.Equal(blob[SessionKeySize:], sig) {
				t.Error("the blob's signature is not the deterministic signature of HMAC(M, C)")
			}
			if s.FirstMessageID(false)+1 != uint16(v.Hello.ID) {
				t.Errorf("hello id: got %d+1, want %d", s.FirstMessageID(false), v.Hello.ID)
			}
		})
	}

	t.Run("deterministic signature", func(t *testing.T) {
		if !v.Deterministic {
			t.Fatal("vector says the signature is not deterministic")
		}
		c := vectors.Hex(t, v.SessionCipher)
		hmac := sessionMAC(material, c)
		if !bytes.Equal(hmac, vectors.Hex(t, v.HMAC)) {
			t.Errorf("hmac: got %x, want %s", hmac, v.HMAC)
		}
		sig, err := rsa.SignPKCS1v15(nil, priv, crypto.Hash(0), hmac)
		if err != nil || !bytes.Equal(sig, vectors.Hex(t, v.Signature)) {
			t.Errorf("signature: got %x %v, want %s", sig, err, v.Signature)
		}
		if want := vectors.Hex(t, v.ServerSends384); !bytes.Equal(cat(c, sig), want) {
			t.Error("C ‖ SIG differs from step3_server_sends_384")
		}
		// The vector's C is a valid encryption of the material.
		if m, err := decryptPKCS1v15(dev, c); err != nil || !bytes.Equal(m, material) {
			t.Errorf("vector C: %x %v", m, err)
		}
	})
}

// TestGeneratedClient: the device side against handshake_generated.json. A
// scripted server sends the vector nonce, checks that the client's block 2
// decrypts to exactly the recorded 52/214-byte plaintext, then replays the
// recorded 384 bytes, which the client must accept.
func TestGeneratedClient(t *testing.T) {
	v := loadGenerated(t)
	priv := privPEM(t, v.ServerPEM)
	dev := privDER(t, v.DevicePrivDER)
	id, _ := keys.ParseDeviceID(v.DeviceID)
	for _, tt := range []struct {
		name  string
		kind  Kind
		plain string
	}{
		{"core", Core, v.CorePlain},
		{"photon", Photon, v.PhotonPlain},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := runScriptedServer(t, ClientConfig{ServerKey: &priv.PublicKey, DeviceKey: dev, DeviceID: id, Kind: tt.kind},
				priv, vectors.Hex(t, v.Nonce), vectors.Hex(t, tt.plain), vectors.Hex(t, v.ServerSends384))
			checkSession(t, s, vectors.Hex(t, v.Material), vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))
			if s.DeviceID != id || s.Kind != tt.kind {
				t.Errorf("got %v %v", s.DeviceID, s.Kind)
			}
		})
	}
}

// runScriptedServer plays a recorded server against Client: it sends nonce,
// checks the decrypted block 2 against wantPlain and sends blob.
func runScriptedServer(t *testing.T, cfg ClientConfig, priv *rsa.PrivateKey, nonce, wantPlain, blob []byte) *Session {
	t.Helper()
	sc, dc := pipe(t)
	done := make(chan error, 1)
	go func() {
		defer sc.Close()
		if _, err := sc.Write(nonce); err != nil {
			done <- err
			return
		}
		block := make([]byte, Block2Size)
		if _, err := io.ReadFull(sc, block); err != nil {
			done <- err
			return
		}
		pt, err := decryptPKCS1v15(priv, block)
		if err != nil || !bytes.Equal(pt, wantPlain) {
			t.Errorf("block 2: got %x %v, want %x", pt, err, wantPlain)
		}
		_, err = sc.Write(blob)
		done <- err
	}()
	s, err := Client(dc, cfg)
	if serr := <-done; serr != nil {
		t.Fatalf("scripted server: %v", serr)
	}
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return s
}

// TestSessionFixtures: the handshake parts of the three recorded sessions
// (the Core library fixture and the real Photon 0.7 / 0.8 firmware).
func TestSessionFixtures(t *testing.T) {
	t.Run("core", func(t *testing.T) {
		var v coreSession
		vectors.Load(t, "session_fixture_core.json", &v)
		need(t, "session_fixture_core.json", v.DevicePrivDER, v.ServerDER, v.DeviceID, v.Nonce, v.Blob, v.Material, v.Key, v.IV, v.Salt, v.HMAC)
		dev := privDER(t, v.DevicePrivDER)
		srv := pubDER(t, v.ServerDER)
		blob := vectors.Hex(t, v.Blob)
		material := vectors.Hex(t, v.Material)
		m, err := OpenSessionKey(dev, srv, blob)
		if err != nil || !bytes.Equal(m, material) {
			t.Fatalf("open blob: got %x %v, want %x", m, err, material)
		}
		if got := sessionMAC(m, blob[:SessionKeySize]); !bytes.Equal(got, vectors.Hex(t, v.HMAC)) {
			t.Errorf("hmac: got %x, want %s", got, v.HMAC)
		}
		if !v.Verifies {
			t.Error("vector says the signature does not verify")
		}
		s := newSession(deviceID(t, v.DeviceID), Core, nil, m)
		checkSession(t, s, material, vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))
		if got := s.FirstMessageID(false); got != uint16(v.FirstID) {
			t.Errorf("first message id: got %d, want %d", got, v.FirstID)
		}
		if got := s.FirstToken(); got != byte(v.FirstToken) {
			t.Errorf("first token: got %d, want %d", got, v.FirstToken)
		}
		// The client accepts the recorded blob for the recorded nonce. (No
		// server private key in this fixture: block 2 is not checked.)
		nonce := vectors.Hex(t, v.Nonce)
		sc, dc := pipe(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer sc.Close()
			_, _ = sc.Write(nonce)
			_, _ = io.ReadFull(sc, make([]byte, Block2Size))
			_, _ = sc.Write(blob)
		}()
		cs, err := Client(dc, ClientConfig{ServerKey: srv, DeviceKey: dev, DeviceID: s.DeviceID, Kind: Core})
		<-done
		if err != nil {
			t.Fatal(err)
		}
		checkSession(t, cs, material, vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))
	})
	for _, tt := range []struct {
		file string
		le   bool
	}{
		{"session_fixture_photon07.json", false},
		{"session_fixture_photon08.json", true},
	} {
		t.Run(tt.file, func(t *testing.T) {
			var v photonSession
			vectors.Load(t, tt.file, &v)
			need(t, tt.file, v.ServerPEM, v.ServerDER, v.DevicePrivDER, v.DevicePubDER, v.DeviceID, v.Nonce, v.Block2,
				v.Block2Plain, v.Blob, v.Material, v.Key, v.IV, v.Salt, v.HMAC)
			priv := privPEM(t, v.ServerPEM)
			dev := privDER(t, v.DevicePrivDER)
			id := deviceID(t, v.DeviceID)
			nonce := vectors.Hex(t, v.Nonce)
			material := vectors.Hex(t, v.Material)
			blob := vectors.Hex(t, v.Blob)

			// Block 2 from the real firmware.
			gotID, offered, err := ParseBlock2(priv, nonce, vectors.Hex(t, v.Block2))
			if err != nil {
				t.Fatal(err)
			}
			if gotID != id || offered == nil || !offered.Equal(pubDER(t, v.DevicePubDER)) || !offered.Equal(&dev.PublicKey) {
				t.Errorf("block 2: got id %v offered %v", gotID, offered)
			}
			pt, _ := decryptPKCS1v15(priv, vectors.Hex(t, v.Block2))
			if !bytes.Equal(pt, vectors.Hex(t, v.Block2Plain)) {
				t.Error("block 2 plaintext differs from the recorded one")
			}
			// The recorded 384 bytes.
			m, err := OpenSessionKey(dev, &priv.PublicKey, blob)
			if err != nil || !bytes.Equal(m, material) {
				t.Fatalf("open blob: %x %v", m, err)
			}
			if got := sessionMAC(m, blob[:SessionKeySize]); !bytes.Equal(got, vectors.Hex(t, v.HMAC)) {
				t.Errorf("hmac: got %x, want %s", got, v.HMAC)
			}
			if sig, _ := rsa.SignPKCS1v15(nil, priv, 0, sessionMAC(m, blob[:SessionKeySize])); !bytes.Equal(sig, blob[SessionKeySize:]) {
				t.Error("the recorded signature is not the deterministic one")
			}
			s := newSession(id, Photon, offered, m)
			checkSession(t, s, material, vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))

			// The hello id rule: BE for ≤ 0.7, LE for ≥ 0.8.
			salt := vectors.Hex(t, v.Salt)
			want := binary.BigEndian.Uint16(salt)
			if tt.le {
				want = binary.LittleEndian.Uint16(salt)
			}
			if got := s.FirstMessageID(tt.le); got != uint16(v.HelloRule.Counter) || got != want || got+1 != uint16(v.HelloRule.HelloID) {
				t.Errorf("first message id: got %d (+1 = %d), want %d (+1 = %d)", got, got+1, v.HelloRule.Counter, v.HelloRule.HelloID)
			}
			if v.HelloRule.FirstToken != nil && s.FirstToken()+1 != byte(*v.HelloRule.FirstToken) {
				t.Errorf("first token: got %d+1, want %d", s.FirstToken(), *v.HelloRule.FirstToken)
			}

			// The whole server side against the recorded block 2.
			ss, err, perr := serveAgainst(t, ServerConfig{Key: priv, Lookup: staticLookup(id, &dev.PublicKey), Rand: fixedRand(nonce, material)},
				rawDevice(func([]byte) []byte { return vectors.Hex(t, v.Block2) }))
			if err != nil || perr != nil {
				t.Fatalf("server %v, device %v", err, perr)
			}
			checkSession(t, ss, material, vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))

			// The whole client side: its block 2 decrypts to the firmware's
			// plaintext byte for byte, and it accepts the recorded blob.
			cs := runScriptedServer(t, ClientConfig{ServerKey: &priv.PublicKey, DeviceKey: dev, DeviceID: id, Kind: Photon},
				priv, nonce, vectors.Hex(t, v.Block2Plain), blob)
			checkSession(t, cs, material, vectors.Hex(t, v.Key), vectors.Hex(t, v.IV), vectors.Hex(t, v.Salt))
		})
	}
}
