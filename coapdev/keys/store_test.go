package keys

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type storeFixture struct {
	id       DeviceID
	key      *rsa.PublicKey // the device's real key
	other    *rsa.PublicKey // another device key
	third    *rsa.PublicKey
	dir      string
	trusted  string
	pending  string
	idString string
}

func newStoreFixture(t *testing.T) storeFixture {
	t.Helper()
	v := loadGen(t)
	other, third := otherDeviceKeys(t)
	dir := t.TempDir()
	id := mustID(t, v.DeviceID)
	return storeFixture{
		id: id, key: &deviceKey(t, v.DevicePrivDER).PublicKey, other: other, third: third, dir: dir,
		trusted: filepath.Join(dir, v.DeviceID+".pub.pem"), pending: filepath.Join(dir, v.DeviceID+"_handshake.pub.pem"),
		idString: v.DeviceID,
	}
}

func openStore(t *testing.T, dir string, mode Mode) *Store {
	t.Helper()
	s, err := OpenStore(dir, mode)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestStoreKnownDevice(t *testing.T) {
	for _, mode := range []Mode{Strict, TOFU} {
		t.Run(mode.String(), func(t *testing.T) {
			fx := newStoreFixture(t)
			s := openStore(t, fx.dir, mode)
			if err := s.Add(fx.id, fx.key); err != nil {
				t.Fatal(err)
			}
			for _, offered := range []*rsa.PublicKey{nil, fx.key} {
				got, err := s.Lookup(fx.id, offered)
				if err != nil || !got.Equal(fx.key) {
					t.Errorf("Lookup(offered=%v): got %v, want the stored key", offered != nil, err)
				}
			}
			if _, err := s.Lookup(fx.id, fx.other); !errors.Is(err, ErrKeyMismatch) {
				t.Errorf("different offered key: got %v, want ErrKeyMismatch", err)
			}
			if exists(fx.pending) {
				t.Error("a mismatching key was saved as a candidate")
			}
			got, err := s.Lookup(fx.id, nil)
			if err != nil || !got.Equal(fx.key) {
				t.Error("the stored key changed after a mismatch")
			}
		})
	}
}

func TestStoreStrictUnknown(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, Strict)

	// A Core offers no key: nothing is saved.
	if _, err := s.Lookup(fx.id, nil); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("core: got %v, want ErrUnknownDevice", err)
	}
	if exists(fx.pending) || exists(fx.trusted) {
		t.Fatal("a Core lookup wrote a file")
	}

	// A Photon's offered key is saved aside, never trusted.
	for range 2 {
		_, err := s.Lookup(fx.id, fx.key)
		if !errors.Is(err, ErrUnknownDevice) {
			t.Fatalf("photon: got %v, want ErrUnknownDevice", err)
		}
		if !strings.Contains(err.Error(), fx.idString+"_handshake.pub.pem") {
			t.Errorf("got %q, want it to name the candidate file", err)
		}
	}
	if exists(fx.trusted) {
		t.Fatal("strict mode trusted an offered key")
	}
	cand, err := readKeyFile(fx.pending)
	if err != nil || !cand.Equal(fx.key) {
		t.Fatalf("candidate: got %v, want the offered key", err)
	}
	// A different key replaces the candidate.
	if _, err := s.Lookup(fx.id, fx.other); !errors.Is(err, ErrUnknownDevice) {
		t.Fatal(err)
	}
	if cand, _ := readKeyFile(fx.pending); !cand.Equal(fx.other) {
		t.Error("the candidate was not replaced by the newer offered key")
	}
	want := []Entry{{ID: fx.id, Pending: true}}
	if got, err := s.List(); err != nil || !cmp.Equal(got, want) {
		t.Errorf("List: got %v %v, want %v", got, err, want)
	}

	// Accept promotes it.
	if err := s.Accept(fx.id); err != nil {
		t.Fatal(err)
	}
	if exists(fx.pending) {
		t.Error("Accept left the candidate")
	}
	if got, err := s.Lookup(fx.id, fx.other); err != nil || !got.Equal(fx.other) {
		t.Errorf("after Accept: got %v, want the accepted key", err)
	}
	if _, err := s.Lookup(fx.id, fx.key); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("after Accept, another key: got %v, want ErrKeyMismatch", err)
	}
	want = []Entry{{ID: fx.id}}
	if got, err := s.List(); err != nil || !cmp.Equal(got, want) {
		t.Errorf("List: got %v %v, want %v", got, err, want)
	}
	if err := s.Accept(fx.id); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("Accept without a candidate: got %v, want ErrUnknownDevice", err)
	}
}

func TestStoreTOFU(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, TOFU)
	if _, err := s.Lookup(fx.id, nil); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown core: got %v, want ErrUnknownDevice", err)
	}
	got, err := s.Lookup(fx.id, fx.key)
	if err != nil || !got.Equal(fx.key) {
		t.Fatalf("first key: got %v, want it recorded", err)
	}
	if !exists(fx.trusted) || exists(fx.pending) {
		t.Fatal("TOFU did not record <id>.pub.pem")
	}
	if _, err := s.Lookup(fx.id, fx.other); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("second, different key: got %v, want ErrKeyMismatch", err)
	}
	if got, err := s.Lookup(fx.id, nil); err != nil || !got.Equal(fx.key) {
		t.Errorf("after a refused key: got %v, want the first key", err)
	}
	// The recorded key is there for a fresh Store too (another process).
	if got, err := openStore(t, fx.dir, Strict).Lookup(fx.id, fx.key); err != nil || !got.Equal(fx.key) {
		t.Errorf("reopened: got %v", err)
	}
}

// TestStoreTOFURace: devices racing to claim one id in TOFU mode; exactly
// one key wins and every other gets ErrKeyMismatch.
func TestStoreTOFURace(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, TOFU)
	cands := []*rsa.PublicKey{fx.key, fx.other, fx.third}
	const rounds = 8
	var wg sync.WaitGroup
	results := make([]*rsa.PublicKey, rounds*len(cands))
	errs := make([]error, len(results))
	for i := range results {
		wg.Go(func() {
			results[i], errs[i] = s.Lookup(fx.id, cands[i%len(cands)])
		})
	}
	wg.Wait()
	stored, err := s.Lookup(fx.id, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range results {
		offered := cands[i%len(cands)]
		switch {
		case offered.Equal(stored):
			if errs[i] != nil || !results[i].Equal(stored) {
				t.Errorf("winner's key: got %v", errs[i])
			}
		default:
			if !errors.Is(errs[i], ErrKeyMismatch) {
				t.Errorf("loser %d: got %v, want ErrKeyMismatch", i, errs[i])
			}
		}
	}
}

func TestStoreAdd(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, Strict)
	if err := s.Add(fx.id, fx.key); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(fx.id, fx.other); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lookup(fx.id, nil); err != nil || !got.Equal(fx.other) {
		t.Errorf("Add did not replace the key: %v", err)
	}
	b, err := os.ReadFile(fx.trusted)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "-----BEGIN PUBLIC KEY-----\n") {
		t.Errorf("stored file is not PEM SPKI: %.30q", b)
	}
	fi, _ := os.Stat(fx.trusted)
	if got := fi.Mode().Perm(); got != 0o644 {
		t.Errorf("got mode %v, want 0644", got)
	}
	des, _ := os.ReadDir(fx.dir)
	if len(des) != 1 {
		t.Errorf("got %d files, want 1 (temp files left?)", len(des))
	}
	// Only device keys.
	srv := &serverKey(t, loadGen(t)).PublicKey
	if err := s.Add(fx.id, srv); !errors.Is(err, ErrBadKey) {
		t.Errorf("2048-bit key: got %v, want ErrBadKey", err)
	}
}

// TestStoreReferenceLayout: a folder written by the reference cloud (PEM
// SPKI files, .json attribute files, unrelated files) is read as is.
func TestStoreReferenceLayout(t *testing.T) {
	fx := newStoreFixture(t)
	pem, _ := PublicPEM(fx.key)
	otherPEM, _ := PublicPEM(fx.other)
	otherID := "1a118ad1c886d54240ce4b17"
	files := map[string][]byte{
		fx.idString + ".pub.pem":             pem,
		fx.idString + ".json":                []byte(`{"coreID":"` + fx.idString + `"}`),
		otherID + "_handshake.pub.pem":       otherPEM,
		"README":                             []byte("keys"),
		"53FF6B065067544853360187.pub.pem":   pem, // upper case: not ours
		"short.pub.pem":                      pem,
		"default_key.pem":                    []byte("not listed"),
		"54e1c888f6d9492bebee1ee9.pub.pem.x": pem,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(fx.dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := openStore(t, fx.dir, Strict)
	if got, err := s.Lookup(fx.id, fx.key); err != nil || !got.Equal(fx.key) {
		t.Errorf("reference key: %v", err)
	}
	want := []Entry{{ID: mustID(t, otherID), Pending: true}, {ID: fx.id}}
	got, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
}

func TestStoreCorruptKey(t *testing.T) {
	fx := newStoreFixture(t)
	srvPEM, _ := PublicPEM(&serverKey(t, loadGen(t)).PublicKey)
	for _, tt := range []struct {
		name string
		file []byte
	}{
		{"garbage", []byte("garbage")},
		{"empty", nil},
		{"server-size key", srvPEM},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(fx.trusted, tt.file, 0o644); err != nil {
				t.Fatal(err)
			}
			s := openStore(t, fx.dir, TOFU)
			_, err := s.Lookup(fx.id, fx.key)
			if !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), fx.idString+".pub.pem") {
				t.Errorf("got %v, want ErrBadKey naming the file", err)
			}
		})
	}
}

func TestStoreRemove(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, Strict)
	if err := s.Remove(fx.id); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("nothing stored: got %v, want ErrUnknownDevice", err)
	}
	_ = s.Add(fx.id, fx.key)
	_, _ = s.Lookup(fx.id, fx.other) // mismatch: no candidate
	if err := s.Remove(fx.id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(fx.id, nil); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("after Remove: got %v, want ErrUnknownDevice", err)
	}
}

// TestStoreMaxPending: made-up ids cannot fill the disk with candidates.
func TestStoreMaxPending(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, Strict)
	s.maxPending = 3
	ids := make([]DeviceID, 5)
	for i := range ids {
		ids[i] = mustID(t, fmt.Sprintf("%024x", i+1))
	}
	for i, id := range ids {
		_, err := s.Lookup(id, fx.key)
		if !errors.Is(err, ErrUnknownDevice) {
			t.Fatalf("got %v, want ErrUnknownDevice", err)
		}
		saved := exists(s.candidatePath(id))
		if want := i < 3; saved != want {
			t.Errorf("candidate %d saved = %v, want %v (%v)", i, saved, want, err)
		}
	}
	// Replacing an existing candidate is allowed at the bound.
	if _, err := s.Lookup(ids[0], fx.other); !errors.Is(err, ErrUnknownDevice) {
		t.Fatal(err)
	}
	if k, _ := readKeyFile(s.candidatePath(ids[0])); !k.Equal(fx.other) {
		t.Error("an existing candidate was not replaced at the bound")
	}
	// Accepting one frees a slot (the count is redone from the folder).
	if err := s.Accept(ids[0]); err != nil {
		t.Fatal(err)
	}
	_, _ = s.Lookup(ids[3], fx.key)
	if !exists(s.candidatePath(ids[3])) {
		t.Error("no candidate saved after a slot was freed")
	}
	// Files removed behind the store's back are noticed at the bound.
	_ = os.Remove(s.candidatePath(ids[1]))
	_, _ = s.Lookup(ids[4], fx.key)
	if !exists(s.candidatePath(ids[4])) {
		t.Error("no candidate saved after one was removed from the folder")
	}
}

func TestOpenStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "keys")
	s, err := OpenStore(dir, TOFU)
	if err != nil {
		t.Fatal(err)
	}
	if s.Dir() != dir || s.Mode() != TOFU {
		t.Errorf("got %s %v", s.Dir(), s.Mode())
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created dir: %v %v", fi, err)
	}
	file := filepath.Join(t.TempDir(), "f")
	_ = os.WriteFile(file, nil, 0o600)
	if _, err := OpenStore(file, Strict); err == nil {
		t.Error("OpenStore on a file: got nil error")
	}
	if _, err := OpenStore(t.TempDir(), Mode(7)); err == nil {
		t.Error("OpenStore with a bad mode: got nil error")
	}
}

// BenchmarkLookup measures the uncached read of <id>.pub.pem that
// Store.Lookup does per handshake (see the Store doc).
func BenchmarkLookup(b *testing.B) {
	v := loadGen(b)
	dir := b.TempDir()
	s, err := OpenStore(dir, Strict)
	if err != nil {
		b.Fatal(err)
	}
	id := mustID(b, v.DeviceID)
	key := &deviceKey(b, v.DevicePrivDER).PublicKey
	if err := s.Add(id, key); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Lookup(id, key); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStoreConcurrentReplace: readers racing a writer that keeps replacing
// the key always see one whole key, never a partial file.
func TestStoreConcurrentReplace(t *testing.T) {
	fx := newStoreFixture(t)
	s := openStore(t, fx.dir, Strict)
	if err := s.Add(fx.id, fx.key); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var writer, readers sync.WaitGroup
	writer.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := fx.key
			if i%2 == 1 {
				k = fx.other
			}
			if err := s.Add(fx.id, k); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range 2 {
		readers.Go(func() {
			for range 300 {
				got, err := s.Lookup(fx.id, nil)
				if err != nil || !(got.Equal(fx.key) || got.Equal(fx.other)) {
					t.Errorf("got %v, want one of the two keys", err)
					return
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	writer.Wait()
	des, err := os.ReadDir(fx.dir)
	if err != nil || len(des) != 1 {
		t.Errorf("got %d files after the race (%v), want 1 (temp files left?)", len(des), err)
	}
}
