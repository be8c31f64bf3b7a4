package bridge

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// InventoryDevice is one entry of the retained JSON list on
// spark/bridge/devices, sorted by id. Functions and Variables are null
// while the device has never been described, and the hello fields are
// absent while it has never connected.
type InventoryDevice struct {
	ID             string            `json:"id"`
	Name           string            `json:"name,omitempty"`
	Topic          string            `json:"topic"`
	Online         bool              `json:"online"`
	LastSeen       *time.Time        `json:"last_seen,omitempty"`
	Kind           string            `json:"kind,omitempty"`
	Platform       string            `json:"platform,omitempty"`
	PlatformID     *uint16           `json:"platform_id,omitempty"`
	ProductID      *uint16           `json:"product_id,omitempty"`
	ProductVersion *uint16           `json:"product_version,omitempty"`
	Functions      []string          `json:"functions"`
	Variables      map[string]string `json:"variables"`
}

// platformName names the platform ids of the devices in scope.
func platformName(id uint16) string {
	switch id {
	case 0:
		return "core"
	case 6:
		return "photon"
	case 8:
		return "p1"
	}
	return ""
}

// inventory builds the list of known devices.
func (b *Bridge) inventory() []InventoryDevice {
	b.mu.Lock()
	devs := slices.Collect(maps.Values(b.devs))
	b.mu.Unlock()
	out := make([]InventoryDevice, 0, len(devs))
	for _, d := range devs {
		d.mu.Lock()
		if !d.listed {
			d.mu.Unlock()
			continue
		}
		e := InventoryDevice{ID: d.id, Name: b.cfg.Devices.Name(d.id), Topic: d.topic, Online: d.sess != nil}
		if !d.lastSeen.IsZero() {
			t := d.lastSeen.UTC()
			e.LastSeen = &t
		}
		if d.last != nil || d.info != (DeviceInfo{}) {
			i := d.info
			e.Kind = i.Kind
			pv, pid := i.ProductVersion, i.ProductID
			e.ProductID, e.ProductVersion = &pid, &pv
			if i.HasPlatform || i.Kind == "core" {
				p := i.PlatformID
				e.PlatformID = &p
				e.Platform = platformName(p)
			}
		}
		if d.desc != nil {
			e.Functions = append([]string{}, slices.Sorted(slices.Values(d.desc.Functions))...)
			e.Variables = map[string]string{}
			for n, t := range d.desc.Variables {
				e.Variables[n] = t.String()
			}
		}
		d.mu.Unlock()
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b InventoryDevice) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// publishInventory publishes spark/bridge/devices.
func (b *Bridge) publishInventory(ctx context.Context) {
	p, err := json.Marshal(b.inventory())
	if err != nil {
		b.log.Error("inventory json", "err", err)
		return
	}
	_ = b.publish(ctx, b.t.inventory(), p, true)
}

// varTypeOf parses a type name of the inventory.
func varTypeOf(s string) (msg.VarType, bool) {
	for _, t := range []msg.VarType{msg.VarBool, msg.VarInt, msg.VarString, msg.VarDouble} {
		if t.String() == s {
			return t, true
		}
	}
	return 0, false
}

// housekeeping publishes the inventory (debounced by InventoryDelay, and
// not before the retained state is restored) and expires held calls. On
// stop it publishes the inventory a last time.
func (b *Bridge) housekeeping(ctx context.Context, stop <-chan struct{}) {
	ticker := time.NewTicker(b.cfg.ExpiryCheck)
	defer ticker.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	synced := b.synced
	dirty, armed := false, false
	for {
		select {
		case <-b.invKick:
			dirty = true
		case <-synced:
			synced = nil
			dirty = true
		case <-debounce.C:
			armed = false
			if b.isSynced() {
				b.publishInventory(ctx)
			} else {
				dirty = true
			}
		case <-ticker.C:
			if b.isSynced() {
				b.expire(ctx)
			}
		case <-stop:
			if b.isSynced() {
				b.publishInventory(ctx)
			}
			return
		}
		if dirty && !armed && b.isSynced() {
			dirty, armed = false, true
			debounce.Reset(b.cfg.InventoryDelay)
		}
	}
}
