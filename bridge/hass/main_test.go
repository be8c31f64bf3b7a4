package hass

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// golden compares a payload, indented, with testdata/<name>.golden.json
// (rewritten with -update).
func golden(t *testing.T, name string, payload []byte) {
	t.Helper()
	var got bytes.Buffer
	if err := json.Indent(&got, payload, "", "  "); err != nil {
		t.Fatalf("%s: payload is not JSON: %v", name, err)
	}
	got.WriteByte('\n')
	path := filepath.Join("testdata", name+".golden.json")
	if *update {
		if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if d := cmp.Diff(string(want), got.String()); d != "" {
		t.Errorf("%s (-want +got), run go test -update if intended:\n%s", path, d)
	}
}

// sectionOf finds devices → id → homeassistant in a devices file's YAML and
// parses it with ParseNode, as the bridge's devices-file parser does.
func sectionOf(t testing.TB, file string, data []byte, id string) (*DeviceConfig, error) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	n := lookup(&doc, "devices", id, "homeassistant")
	if n == nil {
		t.Fatalf("%s: no devices → %s → homeassistant", file, id)
	}
	return ParseNode(file, "device "+id, n)
}

// lookup follows mapping keys from a document node.
func lookup(n *yaml.Node, path ...string) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}
