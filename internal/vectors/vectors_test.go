package vectors

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEveryVectorIsRead: every file in the shared vector directory is named
// by a test of the module, so a vector added there cannot go unread; and
// every vector the tests name exists (a missing one fails, never skips).
func TestEveryVectorIsRead(t *testing.T) {
	entries, err := os.ReadDir(Dir(t))
	if err != nil {
		t.Fatalf("vectors: %v (the shared test vectors must be beside the checkout)", err)
	}
	var files []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".json") {
			files = append(files, e.Name())
		}
	}
	if len(files) == 0 {
		t.Fatal("no vectors found")
	}
	// The module's test files, as git knows them.
	out, err := exec.Command("git", "-C", moduleRoot(t), "ls-files", "*_test.go").Output()
	if err != nil {
		t.Skipf("git ls-files: %v (not a git checkout)", err)
	}
	var tests []byte
	for _, f := range strings.Fields(string(out)) {
		b, err := os.ReadFile(filepath.Join(moduleRoot(t), f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(f, "internal/vectors/vectors_test.go") {
			tests = append(tests, b...)
		}
	}
	for _, f := range files {
		if !strings.Contains(string(tests), `"`+f+`"`) {
			t.Errorf("vector %s is read by no test", f)
		}
		var v map[string]any
		Load(t, f, &v)
		if len(v) == 0 {
			t.Errorf("vector %s is empty", f)
		}
	}
	for _, want := range []string{"aes_framing.json", "coap_messages.json", "handshake_fixture_device.json",
		"handshake_generated.json", "session_fixture_core.json", "session_fixture_photon07.json", "session_fixture_photon08.json"} {
		if !slices.Contains(files, want) {
			t.Errorf("vector %s is missing from %s", want, Dir(t))
		}
	}
}

// moduleRoot is the directory of go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(filepath.Dir(wd))
}

func TestHex(t *testing.T) {
	if got := Hex(t, "0a 0B:ff"); !slices.Equal(got, []byte{0x0a, 0x0b, 0xff}) {
		t.Fatalf("got %x, want 0a0bff", got)
	}
}
