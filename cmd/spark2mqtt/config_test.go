package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clearEnv removes every SPARK2MQTT_ variable for the duration of the test.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	clearEnv(t)
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceListen != ":5683" || c.MQTTListen != ":1883" || c.MQTTURL != "" || c.KeyMode != "strict" ||
		c.BaseTopic != "spark" || c.PollInterval != 30*time.Second || c.QueueTTL != time.Hour || !c.HADiscovery {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestLoadConfigBad(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "pw")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		want string // substring of the error
	}{
		{"unknown variable", map[string]string{"SPARK2MQTT_POLL_INTERVALL": "1s", "SPARK2MQTT_BASE_TOPICC": "x"}, "SPARK2MQTT_BASE_TOPICC, SPARK2MQTT_POLL_INTERVALL"},
		{"malformed duration", map[string]string{"SPARK2MQTT_POLL_INTERVAL": "often"}, "SPARK2MQTT_POLL_INTERVAL"},
		{"malformed bool", map[string]string{"SPARK2MQTT_HA_DISCOVERY": "perhaps"}, "SPARK2MQTT_HA_DISCOVERY"},
		{"duration out of range", map[string]string{"SPARK2MQTT_CALL_TIMEOUT": "1ns"}, "SPARK2MQTT_CALL_TIMEOUT"},
		{"bad key mode", map[string]string{"SPARK2MQTT_KEY_MODE": "open"}, "SPARK2MQTT_KEY_MODE"},
		{"bad listen", map[string]string{"SPARK2MQTT_DEVICE_LISTEN": "5683"}, "SPARK2MQTT_DEVICE_LISTEN"},
		{"wildcard base topic", map[string]string{"SPARK2MQTT_BASE_TOPIC": "spark/#"}, "SPARK2MQTT_BASE_TOPIC"},
		{"bad log format", map[string]string{"SPARK2MQTT_LOG_FORMAT": "xml"}, "SPARK2MQTT_LOG_FORMAT"},
		{"bad log level", map[string]string{"SPARK2MQTT_LOG_LEVEL": "loud"}, "SPARK2MQTT_LOG_LEVEL"},
		{"password twice", map[string]string{"SPARK2MQTT_MQTT_PASSWORD": "a", "SPARK2MQTT_MQTT_PASSWORD_FILE": secret}, "not both"},
		{"password file missing", map[string]string{"SPARK2MQTT_MQTT_PASSWORD_FILE": filepath.Join(dir, "nope")}, "SPARK2MQTT_MQTT_PASSWORD_FILE"},
		{"tls cert without key", map[string]string{"SPARK2MQTT_MQTT_TLS_CERT": secret}, "SPARK2MQTT_MQTT_TLS_CERT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := loadConfig()
			if err == nil {
				t.Fatalf("got no error, want one containing %q", tt.want)
			}
			if !errors.Is(err, errConfig) {
				t.Errorf("error %v is not a configuration error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadConfigPasswordFile(t *testing.T) {
	clearEnv(t)
	secret := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SPARK2MQTT_MQTT_PASSWORD_FILE", secret)
	t.Setenv("SPARK2MQTT_KEY_MODE", "TOFU")
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTTPassword != "s3cret" {
		t.Errorf("got password %q, want %q", c.MQTTPassword, "s3cret")
	}
	if c.KeyMode != "tofu" {
		t.Errorf("got key mode %q, want tofu", c.KeyMode)
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	var b strings.Builder
	if err := printUsage(&b); err != nil {
		t.Fatal(err)
	}
	keys, err := knownKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 20 {
		t.Fatalf("got %d keys, want the whole config", len(keys))
	}
	for _, k := range keys {
		if !strings.Contains(b.String(), k) {
			t.Errorf("usage does not mention %s", k)
		}
	}
	if !strings.Contains(b.String(), "(default :5683)") {
		t.Errorf("usage does not show defaults:\n%s", b.String())
	}
}
