package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"

	"github.com/spark2mqtt/spark2mqtt/broker/embedded"
)

// deployDir is deploy/ at the repository root.
const deployDir = "../../deploy"

// TestDeployUsersExample: the example users file loads, and its hashes are
// the password the file says.
func TestDeployUsersExample(t *testing.T) {
	u, err := embedded.LoadUsers(filepath.Join(deployDir, "users.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(u.Names(), ","); got != "homeassistant,nodered" {
		t.Fatalf("users = %s, want homeassistant,nodered", got)
	}
	b, err := os.ReadFile(filepath.Join(deployDir, "users.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range regexp.MustCompile(`\$2a\$10\$[./A-Za-z0-9]{53}`).FindAllString(string(b), -1) {
		if bcrypt.CompareHashAndPassword([]byte(h), []byte("change-me")) != nil {
			t.Errorf("hash %s is not of the documented password", h)
		}
	}
}

// TestDeployCompose: the compose file is YAML whose spark2mqtt service
// builds from the repository with the shipped Dockerfile and exposes the
// default ports; the Dockerfile builds the command that exists.
func TestDeployCompose(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Build *struct {
				Context    string `yaml:"context"`
				Dockerfile string `yaml:"dockerfile"`
			} `yaml:"build"`
			Ports       []string          `yaml:"ports"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatal(err)
	}
	s, ok := compose.Services["spark2mqtt"]
	if !ok || s.Build == nil {
		t.Fatalf("no spark2mqtt service with a build in %+v", compose.Services)
	}
	ctx := filepath.Join(deployDir, s.Build.Context)
	if _, err := os.Stat(filepath.Join(ctx, "go.mod")); err != nil {
		t.Errorf("build context %s is not the repository root: %v", s.Build.Context, err)
	}
	df, err := os.ReadFile(filepath.Join(ctx, s.Build.Dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"5683:5683", "1883:1883"} {
		if !strings.Contains(strings.Join(s.Ports, " "), want) {
			t.Errorf("ports %v lack %s", s.Ports, want)
		}
	}
	for k := range s.Environment {
		if strings.HasPrefix(k, envPrefix+"_") && !slices.Contains(mustKnownKeys(t), k) {
			t.Errorf("compose sets unknown variable %s", k)
		}
	}
	m := regexp.MustCompile(`go build .* (\./cmd/\S+)`).FindSubmatch(df)
	if m == nil {
		t.Fatal("the Dockerfile has no go build of ./cmd/...")
	}
	if _, err := os.Stat(filepath.Join("../..", string(m[1]), "main.go")); err != nil {
		t.Errorf("the Dockerfile builds %s: %v", m[1], err)
	}
	if !strings.Contains(string(df), "EXPOSE 5683/tcp 1883/tcp") {
		t.Error("the Dockerfile does not expose the device and MQTT ports")
	}
}

func mustKnownKeys(t *testing.T) []string {
	t.Helper()
	k, err := knownKeys()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestDeployGODEBUG: the Dockerfile and the systemd unit start the binary
// with adaptivestackstart=0 (README, Memory). The runtime reads it only
// from the environment at start: //go:debug and go.mod's godebug accept
// only the compatibility settings.
func TestDeployGODEBUG(t *testing.T) {
	for _, tt := range []struct{ file, want string }{
		{"Dockerfile", "\nENV GODEBUG=adaptivestackstart=0\n"},
		{"systemd/spark2mqtt.service", "\nEnvironment=GODEBUG=adaptivestackstart=0\n"},
	} {
		b, err := os.ReadFile(filepath.Join(deployDir, tt.file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), tt.want) {
			t.Errorf("%s lacks %q", tt.file, strings.TrimSpace(tt.want))
		}
	}
}
