package bridge

import (
	"slices"
	"sync"
)

// subIndex indexes the event subscriptions of device sessions by prefix, so
// that finding the devices an event goes to costs one map lookup per
// distinct prefix length, not a call per online device. It is fed by
// DeviceSubscribed (coapdev calls it before a session reports the
// subscription, see coapdev.SubscribeHandler) and forgets a session when it
// ends (DeviceOffline) or when a newer session of the same device
// subscribes. Safe for concurrent use; its lock is taken alone.
type subIndex struct {
	mu sync.Mutex
	// Guarded by mu.
	byID     map[string]*subEntry         // device id → its session's subscriptions
	byPrefix map[string]map[string]Device // prefix → device id → session
	lens     []int                        // the lengths of byPrefix's keys, each once, ascending
	nlen     map[int]int                  // length → number of byPrefix's keys that long
}

// subEntry is one session's subscriptions.
type subEntry struct {
	d        Device
	prefixes []string
}

// subTarget is a device an event goes to.
type subTarget struct {
	id string
	d  Device
}

// add records that session d of device id subscribed to prefix.
func (x *subIndex) add(id string, d Device, prefix string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.byID == nil {
		x.byID = map[string]*subEntry{}
		x.byPrefix = map[string]map[string]Device{}
		x.nlen = map[int]int{}
	}
	e := x.byID[id]
	if e != nil && e.d != d {
		x.removeLocked(id, e) // a newer session: the older one's subscriptions went with it
		e = nil
	}
	if e == nil {
		e = &subEntry{d: d}
		x.byID[id] = e
	}
	if slices.Contains(e.prefixes, prefix) {
		return
	}
	e.prefixes = append(e.prefixes, prefix)
	m := x.byPrefix[prefix]
	if m == nil {
		m = map[string]Device{}
		x.byPrefix[prefix] = m
		if x.nlen[len(prefix)]++; x.nlen[len(prefix)] == 1 {
			i, _ := slices.BinarySearch(x.lens, len(prefix))
			x.lens = slices.Insert(x.lens, i, len(prefix))
		}
	}
	m[id] = d
}

// remove forgets session d of device id (a newer session's entry stays).
func (x *subIndex) remove(id string, d Device) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e := x.byID[id]; e != nil && e.d == d {
		x.removeLocked(id, e)
	}
}

func (x *subIndex) removeLocked(id string, e *subEntry) {
	delete(x.byID, id)
	for _, p := range e.prefixes {
		m := x.byPrefix[p]
		delete(m, id)
		if len(m) > 0 {
			continue
		}
		delete(x.byPrefix, p)
		if x.nlen[len(p)]--; x.nlen[len(p)] == 0 {
			delete(x.nlen, len(p))
			if i, found := slices.BinarySearch(x.lens, len(p)); found {
				x.lens = slices.Delete(x.lens, i, i+1)
			}
		}
	}
}

// match appends to dst the devices, but except, that have a subscription
// whose prefix starts name, each once (Session.Subscribed's rule: no
// MineOnly or device filter, events from the bridge and from other devices
// alike), in no particular order.
func (x *subIndex) match(name, except string, dst []subTarget) []subTarget {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, n := range x.lens {
		if n > len(name) {
			break
		}
		for id, d := range x.byPrefix[name[:n]] {
			if id == except || slices.ContainsFunc(dst, func(t subTarget) bool { return t.id == id }) {
				continue
			}
			dst = append(dst, subTarget{id: id, d: d})
		}
	}
	return dst
}
