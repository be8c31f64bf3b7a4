package keys

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Mode is the store's policy for devices without a stored key.
type Mode uint8

// Modes.
const (
	// Strict accepts only devices whose key is stored (the zero value). A
	// key a Photon offers for an unknown id is saved aside as a candidate
	// for an operator to Accept; it is never trusted automatically.
	Strict Mode = iota
	// TOFU ("trust on first use") records the key an unknown Photon offers
	// and accepts it; a later different key for that id is refused with
	// ErrKeyMismatch. A Core offers no key, so an unknown Core is refused in
	// both modes.
	TOFU
)

// ParseMode parses "strict" or "tofu", in any case.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "strict":
		return Strict, nil
	case "tofu":
		return TOFU, nil
	}
	return 0, fmt.Errorf("keys: mode %q: want strict or tofu", clip(s))
}

// String returns "strict" or "tofu".
func (m Mode) String() string {
	switch m {
	case Strict:
		return "strict"
	case TOFU:
		return "tofu"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// File names in a store folder (spark-protocol.md §1.4, the reference
// cloud's layout): <id>.pub.pem is trusted; <id>_handshake.pub.pem is a key
// an unknown Photon offered, kept for review. Other files (<id>.json, ...)
// are ignored.
const (
	trustedSuffix   = ".pub.pem"
	candidateSuffix = "_handshake.pub.pem"
)

// DefaultMaxPending is how many candidate files (<id>_handshake.pub.pem) a
// Store keeps at most. Block 2 is unauthenticated: anyone holding the
// server public key can send any id with any key, so without a bound a
// stream of made-up ids would fill the disk. Past the bound new candidates
// are not saved (the device is still refused with ErrUnknownDevice).
const DefaultMaxPending = 1000

// Entry is one device in a Store listing.
type Entry struct {
	ID DeviceID
	// Pending is true when the device has no trusted key, only a candidate
	// key it offered in a handshake, waiting for Accept.
	Pending bool
}

// Store is a folder of device public keys in the reference cloud's layout,
// so an existing core_keys/ folder can be used as is. It is safe for
// concurrent use, and other processes (an operator's `keys add`) may change
// the folder while it is in use.
//
// Lookup reads and parses <id>.pub.pem on every call instead of caching:
// the file is one small PEM, a lookup costs about 13 µs and 19 allocations
// (BenchmarkLookup) against about 2.2 ms of RSA work in the handshake that
// calls it (handshake.BenchmarkRSAOps), and reading the file means edits made
// behind the server's back (a key replaced, a device removed) take effect at
// the device's next handshake without any invalidation logic.
type Store struct {
	// Immutable after OpenStore.
	dir        string
	mode       Mode
	maxPending int

	// mu serialises the changes made through this Store (Add, Accept,
	// Remove, TOFU records and candidates), so that check-then-write
	// sequences are atomic within the process. Reads of trusted keys do not
	// take it: files are replaced by rename, so a reader sees a whole file.
	mu      sync.Mutex
	pending int // guarded by mu: candidate files counted, -1 = count again
}

// OpenStore opens the key folder dir, creating it (mode 0700) if it does
// not exist. Mode is Strict or TOFU.
func OpenStore(dir string, mode Mode) (*Store, error) {
	if mode != Strict && mode != TOFU {
		return nil, fmt.Errorf("keys: open store: unknown %v", mode)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: open store: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("keys: open store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("keys: open store: %s is not a directory", dir)
	}
	return &Store{dir: dir, mode: mode, maxPending: DefaultMaxPending, pending: -1}, nil
}

// Dir returns the folder the store reads.
func (s *Store) Dir() string { return s.dir }

// Mode returns the store's mode.
func (s *Store) Mode() Mode { return s.mode }

func (s *Store) trustedPath(id DeviceID) string {
	return filepath.Join(s.dir, id.String()+trustedSuffix)
}

func (s *Store) candidatePath(id DeviceID) string {
	return filepath.Join(s.dir, id.String()+candidateSuffix)
}

// Lookup returns the trusted public key of device id, given the key the
// device offered in its handshake (a Photon's; nil for a Core). Its
// signature fits handshake.Lookup.
//
//   - id has a stored key: the stored key, or ErrKeyMismatch if offered is
//     not nil and differs from it.
//   - unknown id, Strict: ErrUnknownDevice; an offered key is saved as
//     <id>_handshake.pub.pem for review (see Accept), never trusted.
//   - unknown id, TOFU: an offered key is recorded as <id>.pub.pem and
//     returned; without one (a Core) ErrUnknownDevice.
//
// A stored file that does not hold a 1024-bit, e = 65537 key is an error
// wrapping ErrBadKey. Lookup blocks on file I/O only.
func (s *Store) Lookup(id DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
	stored, err := s.readTrusted(id)
	switch {
	case err == nil:
		return compare(stored, offered)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	case offered == nil:
		return nil, ErrUnknownDevice
	}
	if err := CheckDeviceKey(offered); err != nil {
		return nil, fmt.Errorf("keys: offered key: %w", err)
	}
	if s.mode == TOFU {
		return s.record(id, offered)
	}
	saved, err := s.saveCandidate(id, offered)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w (saving its offered key: %w)", ErrUnknownDevice, err)
	case !saved:
		return nil, fmt.Errorf("%w (its offered key is not saved: %d candidates already wait for review)", ErrUnknownDevice, s.maxPending)
	}
	return nil, fmt.Errorf("%w (its offered key is saved as %s for review)", ErrUnknownDevice, filepath.Base(s.candidatePath(id)))
}

func compare(stored, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
	if offered != nil && !stored.Equal(offered) {
		return nil, ErrKeyMismatch
	}
	return stored, nil
}

// readTrusted reads and checks <id>.pub.pem. A missing file wraps
// fs.ErrNotExist.
func (s *Store) readTrusted(id DeviceID) (*rsa.PublicKey, error) {
	return readKeyFile(s.trustedPath(id))
}

func readKeyFile(path string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	pub, err := ParsePublicKey(b)
	if err == nil {
		err = CheckDeviceKey(pub)
	}
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", filepath.Base(path), err)
	}
	return pub, nil
}

// record stores a TOFU key unless another goroutine stored one first.
func (s *Store) record(id DeviceID, offered *rsa.PublicKey) (*rsa.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stored, err := s.readTrusted(id)
	switch {
	case err == nil:
		return compare(stored, offered)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	if err := s.writeKey(s.trustedPath(id), offered); err != nil {
		return nil, fmt.Errorf("keys: record first key: %w", err)
	}
	return offered, nil
}

// saveCandidate writes <id>_handshake.pub.pem unless the same key is
// already there or DefaultMaxPending candidates wait. saved reports whether
// the candidate is on disk afterwards.
func (s *Store) saveCandidate(id DeviceID, offered *rsa.PublicKey) (saved bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := s.candidatePath(id)
	old, err := readKeyFile(path)
	switch {
	case err == nil && old.Equal(offered):
		return true, nil
	case err == nil:
		// A different key for the same id replaces the candidate (the
		// reference does the same); the count does not change.
		return true, s.writeKey(path, offered)
	}
	if _, serr := os.Lstat(path); serr == nil {
		// An unreadable candidate is replaced, not counted again.
		return true, s.writeKey(path, offered)
	}
	if s.pending < 0 || s.pending >= s.maxPending {
		n, err := s.countCandidates()
		if err != nil {
			return false, err
		}
		s.pending = n
	}
	if s.pending >= s.maxPending {
		return false, nil
	}
	if err := s.writeKey(path, offered); err != nil {
		return false, err
	}
	s.pending++
	return true, nil
}

func (s *Store) countCandidates() (int, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, fmt.Errorf("keys: %w", err)
	}
	n := 0
	for _, de := range des {
		if _, pending, ok := parseName(de.Name()); ok && pending {
			n++
		}
	}
	return n, nil
}

func (s *Store) writeKey(path string, pub *rsa.PublicKey) error {
	b, err := publicPEM(pub)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, b, 0o644); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	return nil
}

// Add stores pub as the trusted key of device id (<id>.pub.pem, PEM SPKI),
// replacing any key stored before. The file is written to a temp file and
// renamed, so a concurrent Lookup sees the old key or the new one. pub must
// be a device key (CheckDeviceKey); a pending candidate for id is left in
// place.
func (s *Store) Add(id DeviceID, pub *rsa.PublicKey) error {
	if err := CheckDeviceKey(pub); err != nil {
		return fmt.Errorf("keys: add %s: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writeKey(s.trustedPath(id), pub); err != nil {
		return fmt.Errorf("keys: add %s: %w", id, err)
	}
	return nil
}

// Accept promotes the candidate key device id offered in a refused
// handshake (<id>_handshake.pub.pem) to its trusted key, replacing any key
// stored before, and removes the candidate. Without a candidate it returns
// an error wrapping ErrUnknownDevice.
func (s *Store) Accept(id DeviceID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := s.candidatePath(id)
	pub, err := readKeyFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("keys: accept %s: no pending key: %w", id, ErrUnknownDevice)
	case err != nil:
		return fmt.Errorf("keys: accept %s: %w", id, err)
	}
	if err := s.writeKey(s.trustedPath(id), pub); err != nil {
		return fmt.Errorf("keys: accept %s: %w", id, err)
	}
	s.pending = -1
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("keys: accept %s: remove candidate: %w", id, err)
	}
	return nil
}

// Remove deletes the trusted key and any candidate key of device id. If
// neither exists it returns an error wrapping ErrUnknownDevice.
func (s *Store) Remove(id DeviceID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = -1
	found := false
	for _, p := range []string{s.trustedPath(id), s.candidatePath(id)} {
		err := os.Remove(p)
		switch {
		case err == nil:
			found = true
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("keys: remove %s: %w", id, err)
		}
	}
	if !found {
		return fmt.Errorf("keys: remove %s: %w", id, ErrUnknownDevice)
	}
	return nil
}

// List returns the devices of the store, sorted by id: every id with a
// trusted key, and every id with only a candidate key (Pending). Files whose
// names are not <24 hex>.pub.pem or <24 hex>_handshake.pub.pem are ignored;
// the keys are not parsed.
func (s *Store) List() ([]Entry, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("keys: list: %w", err)
	}
	byID := make(map[DeviceID]bool) // id → pending only
	for _, de := range des {
		if de.IsDir() {
			continue
		}
		id, pending, ok := parseName(de.Name())
		if !ok {
			continue
		}
		if was, seen := byID[id]; !seen || was {
			byID[id] = pending
		}
	}
	out := make([]Entry, 0, len(byID))
	for id, pending := range byID {
		out = append(out, Entry{ID: id, Pending: pending})
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	return out, nil
}

// parseName recognises <id>.pub.pem and <id>_handshake.pub.pem. Only
// lowercase ids are recognised: the store writes lowercase names, and a
// Lookup reads only those.
func parseName(name string) (id DeviceID, pending, ok bool) {
	var stem string
	switch {
	case strings.HasSuffix(name, candidateSuffix):
		stem, pending = strings.TrimSuffix(name, candidateSuffix), true
	case strings.HasSuffix(name, trustedSuffix):
		stem = strings.TrimSuffix(name, trustedSuffix)
	default:
		return id, false, false
	}
	id, err := ParseDeviceID(stem)
	if err != nil || id.String() != stem {
		return id, false, false
	}
	return id, pending, true
}
