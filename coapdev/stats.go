package coapdev

import "sync/atomic"

// Stats is a snapshot of a Server's counters, for metrics. Counters only
// grow; the gauges (Connections, Handshaking, Sessions) go up and down.
type Stats struct {
	// Connections is the number of TCP connections open now (handshaking
	// or in a session).
	Connections int64
	// Handshaking is the number of connections in the handshake now.
	Handshaking int64
	// Sessions is the number of started sessions now.
	Sessions int64

	// HandshakesOK counts handshakes that ended with a parsed Hello.
	HandshakesOK uint64
	// HandshakesFailed counts failed handshakes by CloseReason label.
	HandshakesFailed map[string]uint64
	// SessionsEnded counts ended sessions by CloseReason label.
	SessionsEnded map[string]uint64

	// Events counts device events queued for the Handler.
	Events uint64
	// EventsDropped counts events dropped because the session's handler
	// queue was full (the oldest goes).
	EventsDropped uint64
	// BadEvents counts events that did not parse (dropped).
	BadEvents uint64
	// UnknownTokens counts responses whose token matches no request.
	UnknownTokens uint64
	// LateResponses counts responses to requests that had timed out.
	LateResponses uint64
	// UnknownAcks counts empty ACKs and resets matching no request.
	UnknownAcks uint64
	// Duplicates counts retransmitted device messages (re-ACKed).
	Duplicates uint64
	// UnknownRequests counts device requests with an unknown Uri-Path.
	UnknownRequests uint64
	// RefusedSubscriptions counts Subscribes that were not recorded
	// (invalid, or over the per-session limit).
	RefusedSubscriptions uint64
	// BadDescriptions counts Describe answers that did not parse.
	BadDescriptions uint64
}

// counters are the live values behind Stats.
type counters struct {
	connections, handshaking, sessions atomic.Int64

	handshakesOK     atomic.Uint64
	handshakesFailed [numReasons]atomic.Uint64
	sessionsEnded    [numReasons]atomic.Uint64

	events, eventsDropped, badEvents          atomic.Uint64
	unknownTokens, lateResponses, unknownAcks atomic.Uint64
	duplicates, unknownRequests, refusedSubs  atomic.Uint64
	badDescriptions                           atomic.Uint64
}

func (c *counters) snapshot() Stats {
	st := Stats{
		Connections:          c.connections.Load(),
		Handshaking:          c.handshaking.Load(),
		Sessions:             c.sessions.Load(),
		HandshakesOK:         c.handshakesOK.Load(),
		HandshakesFailed:     map[string]uint64{},
		SessionsEnded:        map[string]uint64{},
		Events:               c.events.Load(),
		EventsDropped:        c.eventsDropped.Load(),
		BadEvents:            c.badEvents.Load(),
		UnknownTokens:        c.unknownTokens.Load(),
		LateResponses:        c.lateResponses.Load(),
		UnknownAcks:          c.unknownAcks.Load(),
		Duplicates:           c.duplicates.Load(),
		UnknownRequests:      c.unknownRequests.Load(),
		RefusedSubscriptions: c.refusedSubs.Load(),
		BadDescriptions:      c.badDescriptions.Load(),
	}
	for r := range numReasons {
		if n := c.handshakesFailed[r].Load(); n > 0 {
			st.HandshakesFailed[CloseReason(r).String()] = n
		}
		if n := c.sessionsEnded[r].Load(); n > 0 {
			st.SessionsEnded[CloseReason(r).String()] = n
		}
	}
	return st
}
