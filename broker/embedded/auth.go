package embedded

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

// auth is the authentication and ACL hook.
//
//   - Without a users file, a client may connect only from a loopback
//     address, without credentials checks, and may publish anywhere but the
//     protected topics.
//   - With a users file, a client must give a listed user name and its
//     password, and reads and writes only what its account lists.
//   - Nobody but the bridge (the inline client, which mochi never checks)
//     writes the protected topics.
//
// A refused publish is not delivered: mochi drops it (QoS 0), answers
// "not authorized" (MQTT 5) or disconnects the client (QoS > 0, MQTT 3.1.1,
// which has no way to say no).
type auth struct {
	mqtt.HookBase
	// Immutable after newAuth.
	users     *Users // nil: anonymous from loopback only
	protected []string
	pace      *pacer // nil: no pacing
	log       *slog.Logger
	key       [32]byte // HMAC key of the verified-password cache

	retain *retainGuard // nil: retained scans unguarded; set by New before the hook is added

	// verified caches the HMAC of each user's last accepted password, so a
	// reconnecting client costs a hash, not a bcrypt (~50 ms of CPU).
	// Guarded by mu.
	mu       sync.Mutex
	verified map[string][sha256.Size]byte

	refused    atomic.Uint64
	lastWarned atomic.Int64 // unix nanos of the last refusal logged at Warn
}

func newAuth(users *Users, protected []string, pace *pacer, log *slog.Logger) *auth {
	a := &auth{users: users, protected: protected, pace: pace, log: log, verified: map[string][sha256.Size]byte{}}
	if _, err := rand.Read(a.key[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return a
}

// ID implements mqtt.Hook.
func (a *auth) ID() string { return "spark2mqtt-auth" }

// Provides implements mqtt.Hook.
func (a *auth) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnectAuthenticate implements mqtt.Hook.
func (a *auth) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if a.users == nil {
		if isLoopback(cl.Net.Remote) {
			return true
		}
		a.refuse(cl, "anonymous client not on loopback (add a users file)")
		return false
	}
	u, ok := a.users.byName[string(pk.Connect.Username)]
	if !ok || !pk.Connect.PasswordFlag {
		a.refuse(cl, "unknown user or no password")
		return false
	}
	if !a.checkPassword(u, pk.Connect.Password) {
		a.refuse(cl, "wrong password")
		return false
	}
	return true
}

func (a *auth) checkPassword(u *user, password []byte) bool {
	mac := hmac.New(sha256.New, a.key[:])
	mac.Write([]byte(u.name))
	mac.Write([]byte{0})
	mac.Write(password)
	var sum [sha256.Size]byte
	mac.Sum(sum[:0])

	a.mu.Lock()
	cached, ok := a.verified[u.name]
	a.mu.Unlock()
	if ok && hmac.Equal(cached[:], sum[:]) {
		return true
	}
	if bcrypt.CompareHashAndPassword(u.hash, password) != nil {
		return false
	}
	a.mu.Lock()
	a.verified[u.name] = sum
	a.mu.Unlock()
	return true
}

// refuse counts a refused connection and logs it at Warn at most every
// 10 seconds (Debug otherwise), so a scanner cannot flood the log.
func (a *auth) refuse(cl *mqtt.Client, reason string) {
	a.refused.Add(1)
	now := time.Now().UnixNano()
	last := a.lastWarned.Load()
	level := slog.LevelDebug
	if now-last > int64(10*time.Second) && a.lastWarned.CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	a.log.Log(context.Background(), level, "mqtt client refused",
		"remote", cl.Net.Remote, "user", string(cl.Properties.Username), "reason", reason,
		"refused_total", a.refused.Load())
}

// OnACLCheck implements mqtt.Hook. topic is a topic name (publish,
// delivery) or a subscription filter (subscribe). mochi grants access when
// any hook says yes, so this must stay the only hook that provides it.
//
// mochi asks with write false just before it queues a delivery to cl, so an
// allowed read is also where the pacer makes the delivering goroutine wait
// for room in cl's write queue.
func (a *auth) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := a.allowed(cl, topic, write)
	if ok && !write {
		a.retain.pause(cl) // never wait holding mochi's index lock (retainlock.go)
		a.pace.wait(cl)
	}
	return ok
}

func (a *auth) allowed(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if write {
		for _, f := range a.protected {
			if covers(f, topic) {
				return false
			}
		}
	}
	if a.users == nil {
		return true
	}
	u, ok := a.users.byName[string(cl.Properties.Username)]
	if !ok {
		return false
	}
	list := u.read
	if write {
		list = u.write
	}
	for _, f := range list {
		if covers(f, topic) {
			return true
		}
	}
	return false
}

// isLoopback reports whether remote (host:port, as net.Addr.String gives
// it) is a loopback address. Anything unparsable is not.
func isLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i] // zone of a link-local IPv6 address
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
