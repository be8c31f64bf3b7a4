package bridge

import "sync/atomic"

// Stats is a snapshot of the bridge's counters since New.
type Stats struct {
	// Calls.
	CallsReceived   uint64 // call requests taken from MQTT
	CallsOK         uint64 // calls the device answered with a return value
	CallsError      uint64 // error results (bad input, device errors), expired and superseded excluded
	CallsQueued     uint64 // calls held for an offline device (queued result published)
	CallsExpired    uint64 // held calls whose ttl ran out
	CallsSuperseded uint64 // waiting calls replaced by a newer one for the same function
	DeviceCalls     uint64 // function calls sent to devices

	// Variables.
	Gets         uint64 // var/NAME/get requests taken from MQTT
	GetsJoined   uint64 // gets served by a read already waiting or in flight
	Reads        uint64 // variable reads sent to devices (polls and gets)
	ReadErrors   uint64 // failed reads
	Polls        uint64 // reads started by the poll timer
	VarPublishes uint64 // values published on var/NAME
	Describes    uint64 // describe requests sent to devices

	// Events.
	EventsIn        uint64 // events received from devices
	EventsOut       uint64 // device events published to MQTT
	EventsSystem    uint64 // system events not published (SystemEvents off)
	EventsFromMQTT  uint64 // events taken from spark/events/...
	EventsToDevices uint64 // events delivered to devices (each device counts)
	EventsDropped   uint64 // device events dropped: queue full, bad name, send failures

	// Other.
	Signals       uint64 // signals sent to devices
	Dropped       uint64 // inbound MQTT messages dropped because the queue was full
	Invalid       uint64 // inbound messages ignored as invalid (one log line each, rate limited)
	PublishErrors uint64 // failed publishes
	Restored      uint64 // held calls rebuilt from retained pending messages

	// Home Assistant discovery.
	DiscoveryPublishes   uint64 // discovery configs published (announcements, updates, removals)
	DiscoveryReannounces uint64 // re-announcements of every device (Home Assistant online, Republish)
	DiscoveryRemovals    uint64 // devices removed from Home Assistant on request
}

// counters are the live counters behind Stats.
type counters struct {
	callsReceived, callsOK, callsError, callsQueued, callsExpired, callsSuperseded, deviceCalls atomic.Uint64
	gets, getsJoined, reads, readErrors, polls, varPublishes, describes                         atomic.Uint64
	eventsIn, eventsOut, eventsSystem, eventsFromMQTT, eventsToDevices, eventsDropped           atomic.Uint64
	signals, dropped, invalid, publishErrors, restored                                          atomic.Uint64
	discoveryPublishes, discoveryReannounces, discoveryRemovals                                 atomic.Uint64
}

// Stats returns a snapshot of the counters. It is safe to call at any time
// from any goroutine.
func (b *Bridge) Stats() Stats {
	c := &b.stats
	return Stats{
		CallsReceived: c.callsReceived.Load(), CallsOK: c.callsOK.Load(), CallsError: c.callsError.Load(),
		CallsQueued: c.callsQueued.Load(), CallsExpired: c.callsExpired.Load(),
		CallsSuperseded: c.callsSuperseded.Load(), DeviceCalls: c.deviceCalls.Load(),
		Gets: c.gets.Load(), GetsJoined: c.getsJoined.Load(), Reads: c.reads.Load(),
		ReadErrors: c.readErrors.Load(), Polls: c.polls.Load(), VarPublishes: c.varPublishes.Load(),
		Describes: c.describes.Load(),
		EventsIn:  c.eventsIn.Load(), EventsOut: c.eventsOut.Load(), EventsSystem: c.eventsSystem.Load(),
		EventsFromMQTT: c.eventsFromMQTT.Load(), EventsToDevices: c.eventsToDevices.Load(),
		EventsDropped: c.eventsDropped.Load(),
		Signals:       c.signals.Load(), Dropped: c.dropped.Load(), Invalid: c.invalid.Load(),
		PublishErrors: c.publishErrors.Load(), Restored: c.restored.Load(),
		DiscoveryPublishes: c.discoveryPublishes.Load(), DiscoveryReannounces: c.discoveryReannounces.Load(),
		DiscoveryRemovals: c.discoveryRemovals.Load(),
	}
}
