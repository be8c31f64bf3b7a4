package embedded

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// hashes of "ha-secret" and "red-secret" at the minimum bcrypt cost, made
// once: the tests need a users file, not strong hashes.
var (
	haHash  = mustHash("ha-secret")
	redHash = mustHash("red-secret")
)

func mustHash(pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}

func writeUsers(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func usersFile(t *testing.T) string {
	return writeUsers(t, `# accounts of the embedded broker
users:
  homeassistant:
    password: "`+haHash+`"
    read: ["spark/#", "homeassistant/#"]
    # Even if it is listed here, device state stays the bridge's.
    write: ["spark/+/fn/#", "spark/+/var/#", "homeassistant/status"]
  nodered:
    password: "`+redHash+`"
    read: ["spark/+/event/#"]
    write: []
`)
}

func TestACL(t *testing.T) {
	cfg := testConfig()
	cfg.UsersFile = usersFile(t)
	b := startBroker(t, cfg)
	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	seen := &collector{}
	if _, err := bridge.Subscribe(ctxT(t), "#", 1, seen.handle); err != nil {
		t.Fatal(err)
	}

	ha := connectPaho(t, pahoOptions(tcpURL(b), "ha").SetUsername("homeassistant").SetPassword("ha-secret"))

	// Allowed: a function call.
	if err := wait(ctxT(t), ha.Publish("spark/heater/fn/heater", 1, false, "on")); err != nil {
		t.Fatalf("allowed publish: %v", err)
	}
	got := seen.wait(t, 1)
	checkTopic(t, got[0], "spark/heater/fn/heater")

	// Refused at QoS 0: dropped silently, the connection stays.
	for _, topic := range []string{"spark/heater/var/temp", "spark/heater/availability", "spark/bridge/state", "other/topic"} {
		if err := wait(ctxT(t), ha.Publish(topic, 0, true, "forged")); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
	// ...while the variable's read request, also under var/, is fine.
	if err := wait(ctxT(t), ha.Publish("spark/heater/var/temp/get", 1, false, "")); err != nil {
		t.Fatal(err)
	}
	got = seen.wait(t, 2)
	checkTopic(t, got[1], "spark/heater/var/temp/get") // nothing forged came before it

	// Refused at QoS 1 over MQTT 3.1.1: mochi ends the connection (3.1.1 has
	// no negative PUBACK); nothing is delivered.
	lost := make(chan struct{})
	ha2 := connectPaho(t, pahoOptions(tcpURL(b), "ha2").SetUsername("homeassistant").SetPassword("ha-secret").
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) }))
	ha2.Publish("spark/heater/var/temp", 1, true, "forged")
	select {
	case <-lost:
	case <-time.After(testTimeout):
		t.Fatal("connection not closed after a refused QoS 1 publish")
	}
	if err := bridge.Publish(ctxT(t), broker.Message{Topic: "spark/heater/var/temp", Payload: []byte("48.5"), QoS: 1, Retain: true}); err != nil {
		t.Fatalf("the bridge may write device state: %v", err)
	}
	got = seen.wait(t, 3)
	checkTopic(t, got[2], "spark/heater/var/temp")
	if string(got[2].Payload) != "48.5" || len(got) != 3 {
		t.Errorf("got %v after the refused publishes, want only the bridge's value", got[2:])
	}

	// Read ACL: nodered may subscribe to events only.
	red := connectPaho(t, pahoOptions(tcpURL(b), "red").SetUsername("nodered").SetPassword("red-secret"))
	tok := red.Subscribe("spark/#", 1, nil)
	if err := wait(ctxT(t), tok); err != nil {
		t.Fatal(err)
	}
	if code := tok.(*paho.SubscribeToken).Result()["spark/#"]; code != 0x80 {
		t.Errorf("SUBACK for a filter beyond the read list: %#x, want 0x80", code)
	}
	events := pahoCollector(t, red, "spark/+/event/#", 1)
	for _, m := range []broker.Message{
		{Topic: "spark/heater/var/temp", Payload: []byte("1"), QoS: 1},
		{Topic: "spark/heater/event/temperature", Payload: []byte("49"), QoS: 1},
	} {
		if err := bridge.Publish(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
	}
	checkTopic(t, events.wait(t, 1)[0], "spark/heater/event/temperature")
}

func checkTopic(t *testing.T, m broker.Message, topic string) {
	t.Helper()
	if m.Topic != topic {
		t.Errorf("got message on %s (%q), want %s", m.Topic, m.Payload, topic)
	}
}

func TestAuthenticationRefused(t *testing.T) {
	cfg := testConfig()
	cfg.UsersFile = usersFile(t)
	b := startBroker(t, cfg)
	for _, tc := range []struct {
		name, user, password string
	}{
		{"wrong password", "homeassistant", "guess"},
		{"other user's password", "homeassistant", "red-secret"},
		{"unknown user", "mallory", "ha-secret"},
		{"anonymous with a users file", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := paho.NewClient(pahoOptions(tcpURL(b), "x").SetUsername(tc.user).SetPassword(tc.password))
			tok := c.Connect()
			if !tok.WaitTimeout(testTimeout) {
				t.Fatal("connect did not finish")
			}
			// mochi answers MQTT 3.1.1 clients with return code 5.
			if !errors.Is(tok.Error(), pahopackets.ErrorRefusedNotAuthorised) {
				t.Errorf("connect: %v, want %v", tok.Error(), pahopackets.ErrorRefusedNotAuthorised)
			}
		})
	}
	if got := b.Stats().Refused; got != 4 {
		t.Errorf("Stats().Refused = %d, want 4", got)
	}
	// The right password still works, twice (the second from the cache).
	for range 2 {
		c := connectPaho(t, pahoOptions(tcpURL(b), "ok").SetUsername("homeassistant").SetPassword("ha-secret"))
		c.Disconnect(100)
	}
}

func TestAnonymousLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		remote string
		want   bool
	}{
		{"127.0.0.1:5000", true},
		{"127.3.4.5:1", true},
		{"[::1]:1883", true},
		{"192.168.1.20:5000", false},
		{"10.0.0.1:1883", false},
		{"[fe80::1%eth0]:1883", false},
		{"[2001:db8::1]:1883", false},
		{"localhost:1883", false}, // not an address: never trusted
		{"pipe", false},
		{"", false},
	} {
		t.Run(tc.remote, func(t *testing.T) {
			if got := isLoopback(tc.remote); got != tc.want {
				t.Errorf("isLoopback(%q) = %v, want %v", tc.remote, got, tc.want)
			}
			// The hook decides with the same function.
			a := newAuth(nil, DefaultProtected("spark"), nil, testConfig().withDefaults().Logger)
			cl := &mqtt.Client{}
			cl.Net.Remote = tc.remote
			if got := a.OnConnectAuthenticate(cl, packets.Packet{}); got != tc.want {
				t.Errorf("OnConnectAuthenticate from %q = %v, want %v", tc.remote, got, tc.want)
			}
		})
	}
}

func TestAnonymousACL(t *testing.T) {
	a := newAuth(nil, DefaultProtected("spark"), nil, testConfig().withDefaults().Logger)
	cl := &mqtt.Client{}
	cl.Net.Remote = "127.0.0.1:1"
	for _, tc := range []struct {
		topic string
		write bool
		want  bool
	}{
		{"spark/heater/fn/heater", true, true},
		{"spark/heater/fn/heater/call", true, true},
		{"spark/heater/var/temp/get", true, true},
		{"spark/events/reset", true, true},
		{"spark/heater/signal", true, true},
		{"spark/heater/var/temp", true, false},
		{"spark/heater/availability", true, false},
		{"spark/bridge/state", true, false},
		{"spark/bridge/devices", true, false},
		{"spark/heater/fn/heater/result", true, false},
		{"spark/heater/fn/heater/pending", true, false},
		{"spark/heater/event/temperature", true, false},
		{"spark/#", false, true},
		{"spark/heater/var/temp", false, true},
	} {
		if got := a.OnACLCheck(cl, tc.topic, tc.write); got != tc.want {
			t.Errorf("OnACLCheck(%q, write=%v) = %v, want %v", tc.topic, tc.write, got, tc.want)
		}
	}
	inline := &mqtt.Client{}
	inline.Net.Inline = true
	if !a.OnACLCheck(inline, "spark/heater/var/temp", true) {
		t.Error("the bridge (inline client) was refused device state")
	}
}

func TestUsersFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"syntax error", "users:\n  ha:\n    password: \"x\n    read: [\n", "line 3"},
		{"tab indentation", "users:\n  ha:\n    password: " + haHash + "\n\tread: []\n", "line 3"}, // yaml.v3 names the line before the tab
		{"unknown top-level key", "users:\n  ha:\n    password: " + haHash + "\nanonymous: true\n", "line 4"},
		{"unknown user key", "users:\n  ha:\n    password: " + haHash + "\n    subscribe: [\"#\"]\n", `line 4: user "ha": unknown key "subscribe"`},
		{"plain password", "users:\n  ha:\n    password: hunter2\n", `line 3: user "ha": password is not a bcrypt hash`},
		{"no password", "users:\n  ha:\n    read: [\"#\"]\n", `line 3: user "ha": no password`},
		{"bad filter", "users:\n  ha:\n    password: " + haHash + "\n    write:\n      - spark/+/fn/#\n      - spark/#/x\n", `line 6: user "ha": write: invalid topic filter "spark/#/x"`},
		{"read not a list", "users:\n  ha:\n    password: " + haHash + "\n    read: spark/#\n", "line 4"},
		{"duplicate user", "users:\n  ha:\n    password: " + haHash + "\n  ha:\n    password: " + haHash + "\n", "line 4"},
		{"no users", "users: {}\n", "line 1"},
		{"empty file", "", "empty"},
		{"user not a mapping", "users:\n  ha: secret\n", "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseUsers([]byte(tc.body))
			if !errors.Is(err, ErrUsersFile) {
				t.Fatalf("got %v, want ErrUsersFile", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to contain %q", err, tc.want)
			}
		})
	}

	// New reports it with the file name; a missing file is an error too.
	cfg := testConfig()
	cfg.UsersFile = writeUsers(t, "users:\n  ha:\n    password: hunter2\n")
	if _, err := New(cfg); !errors.Is(err, ErrUsersFile) || !strings.Contains(err.Error(), "users.yaml") || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("New: %v", err)
	}
	cfg.UsersFile = filepath.Join(t.TempDir(), "missing.yaml")
	if _, err := New(cfg); !errors.Is(err, ErrUsersFile) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New with a missing users file: %v", err)
	}
}

func TestParseUsers(t *testing.T) {
	u, err := ParseUsers([]byte(`users:
  homeassistant:
    password: "` + haHash + `"
    read: ["spark/#"]
    write: ["spark/+/fn/#"]
  viewer:
    password: '` + redHash + `'
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(u.Names(), ","); got != "homeassistant,viewer" {
		t.Errorf("Names() = %s", got)
	}
	if v := u.byName["viewer"]; len(v.read) != 0 || len(v.write) != 0 {
		t.Errorf("viewer has %v / %v, want no access", v.read, v.write)
	}
	h, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("pw")) != nil {
		t.Error("HashPassword's hash does not verify")
	}
}

func FuzzParseUsers(f *testing.F) {
	f.Add([]byte("users:\n  ha:\n    password: " + haHash + "\n    read: [\"spark/#\"]\n    write: [\"spark/+/fn/#\"]\n"))
	f.Add([]byte("users:\n  ha:\n    password: \"x\n"))
	f.Add([]byte("users: {}\n"))
	f.Add([]byte("users:\n  a: {password: " + redHash + ", read: [a/+/#, '#']}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := ParseUsers(data)
		if err != nil {
			if !errors.Is(err, ErrUsersFile) {
				t.Fatalf("error %v does not wrap ErrUsersFile", err)
			}
			return
		}
		if len(u.byName) == 0 {
			t.Fatal("parsed a file with no users")
		}
		for name, acct := range u.byName {
			if name == "" || acct.name != name {
				t.Fatalf("bad account name %q/%q", name, acct.name)
			}
			if _, err := bcrypt.Cost(acct.hash); err != nil {
				t.Fatalf("account %q has a bad hash: %v", name, err)
			}
			for _, f := range append(append([]string(nil), acct.read...), acct.write...) {
				if !validFilter(f) {
					t.Fatalf("account %q has invalid filter %q", name, f)
				}
			}
		}
	})
}
