// Package vectors loads the shared protocol test vectors in
// ../shared/testdata/spark (beside the module checkout) for tests. A missing
// file fails the test; it never skips.
package vectors

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Dir returns the directory of the shared Spark vectors. The environment
// variable SPARK2MQTT_VECTORS overrides the default location, which is
// ../shared/testdata/spark relative to the module root.
func Dir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("SPARK2MQTT_VECTORS"); d != "" {
		return d
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("vectors: cannot locate module root")
	}
	// file is <root>/internal/vectors/vectors.go.
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	return filepath.Join(root, "..", "shared", "testdata", "spark")
}

// Load decodes the JSON vector file name (e.g. "aes_framing.json") into v.
// A missing or undecodable file is a test failure.
func Load(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Dir(t), name))
	if err != nil {
		t.Fatalf("vectors: %v (the shared test vectors must be beside the checkout)", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("vectors: decode %s: %v", name, err)
	}
}

// Hex decodes a hex string from a vector, failing the test on bad input.
// Spaces are ignored.
func Hex(t testing.TB, s string) []byte {
	t.Helper()
	clean := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' && s[i] != ':' {
			clean = append(clean, s[i])
		}
	}
	b, err := hex.DecodeString(string(clean))
	if err != nil {
		t.Fatalf("vectors: bad hex %q: %v", s, err)
	}
	return b
}
