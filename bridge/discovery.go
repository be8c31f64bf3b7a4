package bridge

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spark2mqtt/spark2mqtt/bridge/hass"
	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Home Assistant discovery: bridge/hass builds the payloads, this file
// decides when to publish them (see the package documentation).
//
// The discovery loop, one goroutine owned by Run, is the only publisher of
// <prefix>/device/<id>/config. It announces
//   - at start, once the bridge is ready, the devices whose config is
//     retained in the broker (recorded during the restore, like the
//     inventory), rebuilt from what the bridge knows and published only if
//     they changed (a new devices file, a new version);
//   - a device whose application description is known, when it starts a
//     session and after a Describe that changed it (DeviceOnline and
//     described kick it), published only if the config changed;
//   - every announced device again, DiscoveryDelayMin–Max (random) after
//     Home Assistant publishes "online" on <prefix>/status; any number of
//     such messages while one re-announcement is pending give that one.
//
// A component whose function or variable is gone is removed as Home
// Assistant's device discovery documentation says: the config is published
// once with the component reduced to its platform, then without it. A
// remove request (spark/D/remove) publishes the empty retained config,
// which deletes the device from Home Assistant; it is announced again only
// when it starts a new session.

// discovery is the discovery loop's state.
type discovery struct {
	kick   chan struct{} // cap 1: a request below is waiting; never closed
	online chan struct{} // cap 1: Home Assistant said online; never closed
	again  chan struct{} // cap 1: announce everything now (Republish); never closed

	mu sync.Mutex
	// Guarded by mu: requests from other goroutines.
	dirty   map[string]bool        // device ids to rebuild
	removes map[string][]responder // device ids to remove, with their MQTT 5 requesters
	seen    map[string]seenConfig  // retained configs recorded during the restore, not yet taken
	renew   map[string]bool        // devices that started a session (a removal no longer holds)

	// Owned by the loop.
	published map[string][]byte                   // id → the payload retained now (published or seen)
	cmps      map[string]map[string]hass.Platform // id → the components of that payload
	warned    map[string][]string                 // id → the warnings of its last build (logged once)
	removed   map[string]bool                     // removed by request, until its next session
}

// seenConfig is a retained config of one of our devices, seen at start.
type seenConfig struct {
	payload []byte
	cmps    map[string]hass.Platform
}

func newDiscovery() *discovery {
	return &discovery{
		kick: make(chan struct{}, 1), online: make(chan struct{}, 1), again: make(chan struct{}, 1),
		dirty: map[string]bool{}, removes: map[string][]responder{}, seen: map[string]seenConfig{},
		renew:     map[string]bool{},
		published: map[string][]byte{}, cmps: map[string]map[string]hass.Platform{},
		warned: map[string][]string{}, removed: map[string]bool{},
	}
}

func (x *discovery) wake() {
	select {
	case x.kick <- struct{}{}:
	default:
	}
}

// kickDiscovery asks for device id's config to be rebuilt, and published
// if it changed. It never blocks.
func (b *Bridge) kickDiscovery(id string) {
	if b.cfg.Discovery {
		b.disco.mark(func(x *discovery) { x.dirty[id] = true })
	}
}

// discoveryRenew tells the discovery loop that device id started a session:
// a removal by request no longer holds (its Describe announces it again).
// It never blocks.
func (b *Bridge) discoveryRenew(id string) {
	if b.cfg.Discovery {
		b.disco.mark(func(x *discovery) { x.renew[id] = true })
	}
}

// requestRemove asks the discovery loop to remove device id from Home
// Assistant. It never blocks.
func (b *Bridge) requestRemove(id string, rs []responder) {
	b.disco.mark(func(x *discovery) { x.removes[id] = append(x.removes[id], rs...) })
}

// mark records work for the discovery loop under x.mu and wakes the loop.
func (x *discovery) mark(record func(*discovery)) {
	x.mu.Lock()
	record(x)
	x.mu.Unlock()
	x.wake()
}

// onHAStatus is the handler of <prefix>/status (Home Assistant's birth and
// last will). It never blocks.
func (b *Bridge) onHAStatus(m broker.Message) {
	if string(m.Payload) != "online" {
		return
	}
	select {
	case b.disco.online <- struct{}{}:
	default:
	}
}

// maxDiscoveryPayload bounds a retained config the bridge reads back.
const maxDiscoveryPayload = 1 << 20

// onDiscoveryConfig takes a message of the start subscription to
// <prefix>/device/#: it records the retained configs of our devices (the
// topic's id is a device id and the device's identifiers name it), so that
// a component dropped while the bridge was down is still removed, and an
// unchanged config is not published again. It never blocks.
func (b *Bridge) onDiscoveryConfig(m broker.Message) {
	if !m.Retain || len(m.Payload) == 0 || len(m.Payload) > maxDiscoveryPayload {
		return
	}
	rest, ok := strings.CutPrefix(m.Topic, b.cfg.DiscoveryPrefix+"/device/")
	if !ok {
		return
	}
	id, ok := strings.CutSuffix(rest, "/config")
	if pid, err := parseID(id); !ok || err != nil || pid != id {
		return
	}
	var cfg struct {
		Device struct {
			Identifiers []string `json:"identifiers"`
		} `json:"device"`
		Components map[string]struct {
			Platform string `json:"platform"`
		} `json:"components"`
	}
	if json.Unmarshal(m.Payload, &cfg) != nil || !slices.Contains(cfg.Device.Identifiers, hass.Identifier(id)) {
		return
	}
	cmps := map[string]hass.Platform{}
	for cid, c := range cfg.Components {
		cmps[cid] = hass.Platform(c.Platform)
	}
	x := b.disco
	x.mu.Lock()
	x.seen[id] = seenConfig{payload: bytes.Clone(m.Payload), cmps: cmps}
	x.mu.Unlock()
	x.wake()
}

// discoveryLoop publishes the discovery configs. It first reads back the
// retained configs, then starts announcing once Run is ready, and returns
// when stop is closed.
func (b *Bridge) discoveryLoop(ctx context.Context, stop <-chan struct{}) {
	x := b.disco
	b.readConfigs(ctx, stop)
	select {
	case <-b.ready:
	case <-stop:
		return
	}
	b.takeRequests(ctx)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var later <-chan time.Time
	for {
		select {
		case <-stop:
			return
		case <-x.kick:
			b.takeRequests(ctx)
		case <-x.online:
			if later == nil {
				d := b.cfg.DiscoveryDelayMin
				if span := b.cfg.DiscoveryDelayMax - d; span > 0 {
					d += rand.N(span)
				}
				timer.Reset(d)
				later = timer.C
				b.log.Debug("home assistant online: announcing again", "took", d)
			}
		case <-later:
			later = nil
			b.reannounce(ctx)
		case <-x.again:
			b.reannounce(ctx)
		}
	}
}

// readConfigs collects the retained configs under <prefix>/device/ (see
// onDiscoveryConfig). Like the bridge's own restore it publishes a
// non-retained marker on a topic its subscription matches and waits for it:
// the broker delivers a subscription's retained messages before what is
// published after it. The marker, <prefix>/device/spark2mqtt-sync-<nonce>,
// has no /config level, so Home Assistant (subscribed to
// <prefix>/+/+/config and <prefix>/+/+/+/config) never sees it.
// SyncTimeout bounds the wait.
func (b *Bridge) readConfigs(ctx context.Context, stop <-chan struct{}) {
	var nonce [8]byte
	_, _ = crand.Read(nonce[:])
	marker := b.cfg.DiscoveryPrefix + "/device/spark2mqtt-sync-" + hex.EncodeToString(nonce[:])
	done := make(chan struct{})
	var once sync.Once
	unsub, err := b.cfg.Client.Subscribe(ctx, b.cfg.DiscoveryPrefix+"/device/#", 1, func(m broker.Message) {
		if m.Topic == marker {
			once.Do(func() { close(done) })
			return
		}
		b.onDiscoveryConfig(m)
	})
	if err != nil {
		b.log.Warn("home assistant discovery: retained configs not read", "err", err)
		return
	}
	defer b.unsubscribe([]func(context.Context) error{unsub})
	if err := b.cfg.Client.Publish(ctx, broker.Message{Topic: marker, Payload: []byte("sync"), QoS: 1}); err != nil {
		b.log.Warn("home assistant discovery: publish start marker", "topic", marker, "err", err)
	}
	wait := time.NewTimer(b.cfg.SyncTimeout)
	defer wait.Stop()
	select {
	case <-done:
	case <-wait.C:
		b.log.Warn("home assistant discovery: start marker not seen: going on with the configs that arrived", "took", b.cfg.SyncTimeout)
	case <-stop:
	}
}

// takeRequests handles what other goroutines asked for: retained configs
// seen at start, new sessions, removals, rebuilds.
func (b *Bridge) takeRequests(ctx context.Context) {
	x := b.disco
	x.mu.Lock()
	seen, dirty, removes, renew := x.seen, x.dirty, x.removes, x.renew
	x.seen, x.dirty, x.removes, x.renew = map[string]seenConfig{}, map[string]bool{}, map[string][]responder{}, map[string]bool{}
	x.mu.Unlock()
	for id, sc := range seen {
		if _, ok := x.published[id]; !ok && !x.removed[id] {
			x.published[id], x.cmps[id] = sc.payload, sc.cmps
			dirty[id] = true
		}
	}
	for id := range renew {
		delete(x.removed, id)
	}
	for _, id := range slices.Sorted(maps.Keys(removes)) {
		b.removeDiscovery(ctx, id, removes[id])
		delete(dirty, id)
	}
	b.announce(ctx, slices.Sorted(maps.Keys(dirty)), false)
}

// reannounce publishes the config of every announced device again.
func (b *Bridge) reannounce(ctx context.Context) {
	b.takeRequests(ctx)
	b.stats.discoveryReannounces.Add(1)
	b.announce(ctx, slices.Sorted(maps.Keys(b.disco.published)), true)
}

// reannounceNow asks for every announced config to be published again at
// once (after a reconnect to a broker that may have lost them). It never
// blocks.
func (b *Bridge) reannounceNow() {
	if !b.cfg.Discovery {
		return
	}
	select {
	case b.disco.again <- struct{}{}:
	default:
	}
}

// announce builds and publishes the configs of the devices ids; force
// publishes them even when unchanged (a re-announcement).
func (b *Bridge) announce(ctx context.Context, ids []string, force bool) {
	x := b.disco
	for _, id := range ids {
		if x.removed[id] {
			continue
		}
		hd, ok := b.hassDevice(id)
		if !ok {
			continue // not described yet: nothing to announce
		}
		disc, warns, err := hass.Build(b.hassOptions(), hd)
		if err != nil {
			b.lim.warn(b.log, "discovery:"+id, "home assistant discovery: device not announced", "device", id, "err", err)
			continue
		}
		b.logWarnings(id, warns)
		payload := disc.Payload()
		prev, had := x.published[id]
		if had && !force && bytes.Equal(prev, payload) {
			continue
		}
		if !had && len(payload) == 0 {
			continue // nothing announced, nothing to remove
		}
		if rm, ok := disc.Removing(x.cmps[id]); ok {
			b.log.Info("home assistant discovery: components removed", "device", id,
				"components", strings.Join(removedIDs(x.cmps[id], disc.Components), ","))
			if b.publish(ctx, disc.Topic, rm, true) != nil {
				continue
			}
		}
		if b.publish(ctx, disc.Topic, payload, true) != nil {
			continue
		}
		b.stats.discoveryPublishes.Add(1)
		if len(payload) == 0 {
			delete(x.published, id)
			delete(x.cmps, id)
			continue
		}
		x.published[id], x.cmps[id] = payload, disc.Components
		if !had {
			b.log.Info("home assistant discovery: device announced", "device", id, "topic", disc.Topic, "components", len(disc.Components))
		}
	}
}

func removedIDs(prev, now map[string]hass.Platform) []string {
	var out []string
	for id := range prev {
		if _, ok := now[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// removeDiscovery publishes the empty retained config of device id.
func (b *Bridge) removeDiscovery(ctx context.Context, id string, rs []responder) {
	x := b.disco
	topic := hass.ConfigTopic(b.cfg.DiscoveryPrefix, id)
	errText := ""
	if err := b.publish(ctx, topic, []byte{}, true); err != nil {
		errText = "publish failed"
	} else {
		delete(x.published, id)
		delete(x.cmps, id)
		delete(x.warned, id)
		x.removed[id] = true
		b.stats.discoveryRemovals.Add(1)
		b.log.Info("home assistant discovery: device removed", "device", id, "topic", topic)
	}
	p, _ := json.Marshal(removeResponse{Device: id, Removed: errText == "", Error: errText})
	for _, to := range rs {
		_ = b.publishMsg(ctx, broker.Message{Topic: to.topic, Payload: p, QoS: 1, CorrelationData: to.corr})
	}
}

// removeResponse is the JSON of an MQTT 5 response to a remove request.
type removeResponse struct {
	Device  string `json:"device"`
	Removed bool   `json:"removed"`
	Error   string `json:"error,omitempty"`
}

// logWarnings logs the warnings of a build that were not logged for the
// previous build of the same device.
func (b *Bridge) logWarnings(id string, warns []hass.Warning) {
	x := b.disco
	var now []string
	for _, w := range warns {
		s := w.String()
		now = append(now, s)
		if !slices.Contains(x.warned[id], s) {
			b.log.Warn("home assistant discovery: entity not published", "device", id, "entity", w.Entity,
				"line", w.Line, "reason", w.Msg)
		}
	}
	x.warned[id] = now
}

// acceptRemove takes a remove request (spark/D/remove, any payload).
func (b *Bridge) acceptRemove(ctx context.Context, in inbound) {
	var rs []responder
	if in.resp != "" {
		rs = []responder{{topic: in.resp, corr: in.corr}}
	}
	fail := func(what string) {
		b.stats.invalid.Add(1)
		b.lim.warn(b.log, "remove:"+what, "remove: "+what, "device", in.d)
		p, _ := json.Marshal(removeResponse{Device: in.d, Error: what})
		for _, to := range rs {
			_ = b.publishMsg(ctx, broker.Message{Topic: to.topic, Payload: p, QoS: 1, CorrelationData: to.corr})
		}
	}
	if !b.cfg.Discovery {
		fail("home assistant discovery is off")
		return
	}
	id, ok := b.resolveLevel(in.d)
	if !ok {
		fail("unknown device")
		return
	}
	b.requestRemove(id, rs)
}

// hassOptions are the discovery options of every device.
func (b *Bridge) hassOptions() hass.Options {
	return hass.Options{Prefix: b.cfg.DiscoveryPrefix, BaseTopic: b.cfg.BaseTopic, Origin: hass.Origin{SWVersion: b.cfg.Version}}
}

// hassDevice is what discovery needs of device id; false while its
// application description is unknown.
func (b *Bridge) hassDevice(id string) (hass.Device, bool) {
	b.mu.Lock()
	d := b.devs[id]
	b.mu.Unlock()
	if d == nil {
		return hass.Device{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.desc == nil {
		return hass.Device{}, false
	}
	i := d.info
	hd := hass.Device{
		ID: id, Topic: d.topic, Name: b.cfg.Devices.Name(id),
		Kind: i.Kind, PlatformID: i.PlatformID, HasPlatform: i.HasPlatform,
		ProductID: i.ProductID, ProductVersion: i.ProductVersion,
		HasHello:  d.last != nil || i != (DeviceInfo{}),
		MaxArg:    i.MaxArg,
		Functions: slices.Clone(d.desc.Functions),
		Variables: maps.Clone(d.desc.Variables),
		Config:    b.cfg.Devices.HomeAssistant(id),
	}
	if !hd.HasPlatform && d.desc.HasPlatform && d.desc.Platform >= 0 && d.desc.Platform <= 0xFFFF {
		hd.PlatformID, hd.HasPlatform = uint16(d.desc.Platform), true
	}
	return hd, true
}
