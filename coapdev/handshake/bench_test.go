package handshake

import (
	"crypto/rsa"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// benchKeys are the handshake_generated.json keys with a block 2 for a
// fixed nonce precomputed, so the device's RSA work is outside the timing.
type benchKeys struct {
	priv     *rsa.PrivateKey
	dev      *rsa.PrivateKey
	id       keys.DeviceID
	nonce    []byte
	material []byte
	block2   map[Kind][]byte
}

func loadBench(b *testing.B) benchKeys {
	b.Helper()
	v := loadGenerated(b)
	id, err := keys.ParseDeviceID(v.DeviceID)
	if err != nil {
		b.Fatal(err)
	}
	return benchKeys{
		priv: privPEM(b, v.ServerPEM), dev: privDER(b, v.DevicePrivDER), id: id,
		nonce: vectors.Hex(b, v.Nonce), material: vectors.Hex(b, v.Material),
		block2: map[Kind][]byte{Core: vectors.Hex(b, v.CoreCipher), Photon: vectors.Hex(b, v.PhotonCipher)},
	}
}

// BenchmarkRSAOps times the three RSA operations a server handshake does,
// alone and together (all3): the floor BenchmarkServerHandshake is held to.
func BenchmarkRSAOps(b *testing.B) {
	k := loadBench(b)
	block := k.block2[Photon]
	c, err := encryptPKCS1v15(nil, &k.dev.PublicKey, k.material)
	if err != nil {
		b.Fatal(err)
	}
	mac := sessionMAC(k.material, c)
	b.Run("decrypt2048", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := decryptPKCS1v15(k.priv, block); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sign2048", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := rsa.SignPKCS1v15(nil, k.priv, 0, mac); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encrypt1024", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := encryptPKCS1v15(nil, &k.dev.PublicKey, k.material); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("all3", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := decryptPKCS1v15(k.priv, block); err != nil {
				b.Fatal(err)
			}
			if _, err := encryptPKCS1v15(nil, &k.dev.PublicKey, k.material); err != nil {
				b.Fatal(err)
			}
			if _, err := rsa.SignPKCS1v15(nil, k.priv, 0, mac); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// cycleReader yields b over and over: the Rand of a benchmark server, so
// every handshake uses the nonce the precomputed block 2 was made for.
type cycleReader struct {
	b   []byte
	off int
}

func (r *cycleReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// benchDevice answers handshakes on c until it is closed: read the nonce,
// write the precomputed block 2, read the 384 bytes. It does no crypto.
func benchDevice(c net.Conn, block []byte) {
	var nonce [NonceSize]byte
	var blob [ServerBlobSize]byte
	for {
		if _, err := io.ReadFull(c, nonce[:]); err != nil {
			return
		}
		if _, err := c.Write(block); err != nil {
			return
		}
		if _, err := io.ReadFull(c, blob[:]); err != nil {
			return
		}
	}
}

// newBenchServer returns a server conn with a device goroutine on the other
// end of a net.Pipe, the config (a real keys.Store on a temp dir) and a
// stop func that closes both ends and waits for the goroutine.
func newBenchServer(b *testing.B, k benchKeys, kind Kind) (net.Conn, ServerConfig, func()) {
	b.Helper()
	st, err := keys.OpenStore(b.TempDir(), keys.Strict)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Add(k.id, &k.dev.PublicKey); err != nil {
		b.Fatal(err)
	}
	sc, dc := net.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() { benchDevice(dc, k.block2[kind]) })
	cfg := ServerConfig{Key: k.priv, Lookup: st.Lookup, Rand: &cycleReader{b: cat(k.nonce, k.material)}}
	return sc, cfg, func() {
		_ = sc.Close()
		_ = dc.Close()
		wg.Wait()
	}
}

// BenchmarkServerHandshake times everything the server does per handshake:
// nonce, write, read, decrypt, checks, key parse (Photon), lookup in a real
// keys.Store, encrypt, HMAC, sign, write. Compare with BenchmarkRSAOps/all3.
func BenchmarkServerHandshake(b *testing.B) {
	k := loadBench(b)
	for _, kind := range []Kind{Core, Photon} {
		b.Run(kind.String(), func(b *testing.B) {
			conn, cfg, stop := newBenchServer(b, k, kind)
			defer stop()
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if _, err := Server(conn, cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkServerHandshakeParallel runs Photon handshakes from as many
// goroutines as GOMAXPROCS (use -cpu 2 for two) and reports handshakes/s.
func BenchmarkServerHandshakeParallel(b *testing.B) {
	k := loadBench(b)
	var mu sync.Mutex
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	b.ReportAllocs()
	cpu := reportCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		conn, cfg, stop := newBenchServer(b, k, Photon)
		stops = append(stops, stop)
		mu.Unlock()
		for pb.Next() {
			if _, err := Server(conn, cfg); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	cpu()
}

// reportCPU starts measuring process CPU time; the func it returns reports
// it per op as cpu-ns/op. Call it after setup, and the func after the loop.
func reportCPU(b *testing.B) func() {
	start := processCPU()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}
