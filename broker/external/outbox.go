package external

import "container/list"

// entry is one outgoing QoS 1 or 2 message waiting for the broker. Its
// payload is our own copy.
type entry struct {
	topic   string
	payload []byte
	qos     byte
	retain  bool
}

// outbox is the bounded, ordered buffer of messages published while the
// broker was away (or while earlier buffered ones were still being sent).
// It is not safe for concurrent use: the Client guards it with its mutex.
//
// A retained message supersedes a buffered retained message for the same
// topic: the broker would keep only the newer one, so the older is removed
// and the newer goes to the back of the queue (which keeps its order
// relative to other topics). Capacity is checked by the Client before push;
// requeued entries may exceed it for a moment.
type outbox struct {
	l        list.List                // of *entry, oldest first
	retained map[string]*list.Element // newest buffered retained entry per topic
}

func (o *outbox) len() int { return o.l.Len() }

// pushBack appends e. It reports whether e replaced an older retained
// message for the same topic (so the length did not grow).
func (o *outbox) pushBack(e *entry) (replaced bool) {
	if e.retain {
		if o.retained == nil {
			o.retained = make(map[string]*list.Element)
		}
		if old, ok := o.retained[e.topic]; ok {
			o.l.Remove(old)
			replaced = true
		}
		o.retained[e.topic] = o.l.PushBack(e)
		return replaced
	}
	o.l.PushBack(e)
	return false
}

// wouldReplace reports whether pushing e would replace a buffered entry.
func (o *outbox) wouldReplace(e *entry) bool {
	if !e.retain {
		return false
	}
	_, ok := o.retained[e.topic]
	return ok
}

// popFront removes and returns the oldest entry, or nil.
func (o *outbox) popFront() *entry {
	el := o.l.Front()
	if el == nil {
		return nil
	}
	e := o.l.Remove(el).(*entry)
	if e.retain && o.retained[e.topic] == el {
		delete(o.retained, e.topic)
	}
	return e
}

// pushFront puts entries that were taken out but not acknowledged back at
// the front, in their order. A retained entry whose topic has a newer
// buffered retained entry is dropped instead (the newer one wins anyway);
// the count of those is returned.
func (o *outbox) pushFront(es []*entry) (superseded int) {
	for i := len(es) - 1; i >= 0; i-- {
		e := es[i]
		if e.retain {
			if _, ok := o.retained[e.topic]; ok {
				superseded++
				continue
			}
			if o.retained == nil {
				o.retained = make(map[string]*list.Element)
			}
			o.retained[e.topic] = o.l.PushFront(e)
			continue
		}
		o.l.PushFront(e)
	}
	return superseded
}

// clear empties the outbox and returns how many entries it held.
func (o *outbox) clear() int {
	n := o.l.Len()
	o.l.Init()
	clear(o.retained)
	return n
}
