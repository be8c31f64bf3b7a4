package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the package boundaries of DESIGN.md: the device side knows
// nothing of MQTT, the bridge knows brokers only through the broker
// interface, the broker contract imports no third-party code, and no test
// code reaches the binary.
func TestDeps(t *testing.T) {
	const mod = "github.com/spark2mqtt/spark2mqtt/"
	tests := []struct {
		pkg       string
		forbidden []string
	}{
		{"./", []string{"testing", "github.com/spark2mqtt/spark2mqtt/coapdev/devsim/internal"}},
		{"../../coapdev/...", []string{mod + "broker", mod + "bridge", "github.com/mochi-mqtt/", "github.com/eclipse/paho.mqtt.golang"}},
		{"../../bridge/...", []string{"github.com/mochi-mqtt/", "github.com/eclipse/paho.mqtt.golang", mod + "broker/embedded", mod + "broker/external"}},
		{"../../broker", []string{"github.com/", "golang.org/x/"}},
		{"../../broker/embedded", []string{"github.com/eclipse/paho.mqtt.golang"}},
		{"../../broker/external", []string{"github.com/mochi-mqtt/"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", tt.pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", tt.pkg, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 5 {
				t.Fatalf("go list -deps %s listed only %v", tt.pkg, deps)
			}
			for _, d := range deps {
				for _, f := range tt.forbidden {
					if strings.HasPrefix(d, mod) && !strings.HasPrefix(f, mod) {
						continue // our own packages are checked by the rows naming them
					}
					if d == f || strings.HasPrefix(d, f) && (strings.HasSuffix(f, "/") || strings.HasPrefix(d, f+"/")) {
						t.Errorf("%s depends on %s", tt.pkg, d)
					}
				}
			}
		})
	}
}
