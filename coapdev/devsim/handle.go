package devsim

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// handle processes one decrypted frame from the server.
func (l *link) handle(p []byte) error {
	if len(p) == 1 {
		return nil // a keep-alive byte (spark-protocol.md §4.4 "Ping")
	}
	m, err := msg.Decode(p)
	if err != nil {
		// spark-protocol.md §4.5: a device drops the connection on a parse
		// failure.
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	l.log.Debug("received", "type", m.Type, "code", m.Code, "id", m.ID, "path", m.Path)
	if m.Type == msg.Acknowledgement && m.Code.Class() >= 4 && l.q.dropOnErrorAck {
		return fmt.Errorf("%w: %v to id %#04x", ErrErrorAck, m.Code, m.ID)
	}
	switch m.Kind() {
	case msg.KindHello:
		l.serverHello = true
	case msg.KindDescribe:
		return l.describe(m)
	case msg.KindFunctionCall:
		return l.functionCall(m)
	case msg.KindVariableRequest:
		return l.variable(m)
	case msg.KindEvent:
		l.event(m)
	case msg.KindSignal:
		return l.signal(m)
	case msg.KindPing:
		return l.pingAck(m)
	case msg.KindEmptyAck:
		if ch, ok := l.pingWaiters[m.ID]; ok {
			delete(l.pingWaiters, m.ID)
			ch <- struct{}{}
		}
	case msg.KindResponse:
		l.response(m)
	case msg.KindUpdateBegin:
		// The simulator takes no firmware: ACK 5.03 ("UpdateAbort",
		// spark-protocol.md §4.4 "UpdateBegin").
		return l.write(msg.NewAck(m.ID, []byte{token(m)}, msg.ServiceUnavailable, nil))
	default:
		// Chunk, UpdateDone, KeyChange and unknown requests: ignored, as the
		// Core ignores what it does not know.
		l.log.Debug("ignored", "kind", m.Kind())
	}
	return nil
}

// token returns the 1-byte token of a server request: the firmware takes
// byte 4 whatever the TKL (spark-protocol.md §4.1).
func token(m msg.Message) byte {
	if len(m.Token) == 0 {
		return 0
	}
	return m.Token[0]
}

// appRegistry returns the functions and variables the device has now:
// none before the application started.
func (l *link) appRegistry() ([]Function, []Variable) {
	if !l.appStarted {
		return nil, nil
	}
	fns, vars, _ := l.d.app()
	return fns, vars
}

// describe answers a Describe with a piggybacked ACK 2.05 and the JSON
// (spark-protocol.md §4.4), which is empty before the application started.
func (l *link) describe(m msg.Message) error {
	flags := byte(0)
	if len(m.Query) > 0 && len(m.Query[0]) > 0 {
		flags = m.Query[0][0]
	}
	fns, vars := l.appRegistry()
	body := describeJSON(l.q, fns, vars, flags)
	if err := l.send(appendContent(nil, m.ID, token(m), body)); err != nil {
		return err
	}
	l.d.count(func(s *Stats) { s.Describes++ })
	if !l.describeAnswered {
		l.describeAnswered = true
		return l.maybeStartApp()
	}
	return nil
}

// functionCall answers a FunctionCall: an empty ACK, the function runs, then
// a separate NON 2.04 with its int32 result (spark-protocol.md §4.4).
func (l *link) functionCall(m msg.Message) error {
	name := ""
	if len(m.Path) > 1 {
		name = truncate(m.Path[1], maxFunctionName)
	}
	var arg string
	if len(m.Query) > 0 {
		arg = string(m.Query[0])
	}
	tok := token(m)
	if len(arg) > maxFunctionArg {
		if l.q.dropOnLongArg {
			return fmt.Errorf("%w: %d bytes", ErrArgTooLong, len(arg))
		}
		// Photon: ACK 4.00, and the function runs with the previous
		// call's argument (observed on 0.7/0.8, spark-protocol.md §4.4).
		if err := l.write(msg.NewAck(m.ID, []byte{tok}, msg.BadRequest, nil)); err != nil {
			return err
		}
		l.d.mu.Lock()
		arg = l.d.lastArg
		l.d.mu.Unlock()
	} else {
		if err := l.write(msg.NewEmptyAck(m.ID)); err != nil {
			return err
		}
		l.d.mu.Lock()
		l.d.lastArg = arg
		l.d.mu.Unlock()
	}
	result := int32(-1) // an unknown function returns -1 (spark-protocol.md §4.5)
	fns, _ := l.appRegistry()
	for _, f := range fns {
		if truncate(f.Name, maxFunctionName) == name {
			result = f.Call(l.ctx, arg)
			break
		}
	}
	l.d.count(func(s *Stats) { s.Calls++ })
	var payload [4]byte
	binary.BigEndian.PutUint32(payload[:], uint32(result))
	return l.write(msg.NewResponse(msg.NonConfirmable, l.newID(), []byte{tok}, msg.Changed, payload[:]))
}

// variable answers a VariableRequest with a piggybacked ACK 2.05 holding the
// value, or ACK 4.04 for an unknown name (spark-protocol.md §4.4).
func (l *link) variable(m msg.Message) error {
	name := ""
	if len(m.Path) > 1 {
		name = truncate(m.Path[1], maxFunctionName)
	}
	_, vars := l.appRegistry()
	l.d.count(func(s *Stats) { s.Gets++ })
	for _, v := range vars {
		if truncate(v.Name, maxFunctionName) != name {
			continue
		}
		val := v.Get()
		val.Type = v.Type
		b := val.Encode()
		if v.Type == msg.VarString && len(b) > maxStringVar {
			b = b[:maxStringVar]
		}
		return l.send(appendContent(nil, m.ID, token(m), b))
	}
	return l.write(msg.NewAck(m.ID, []byte{token(m)}, msg.NotFound, nil))
}

// event delivers a server event to OnEvent when one of the application's
// subscription prefixes matches its name (the firmware compares prefixes).
func (l *link) event(m msg.Message) {
	e, err := msg.ParseEvent(m)
	if err != nil {
		l.log.Debug("bad event", "err", err)
		return
	}
	for _, s := range l.subs {
		if strings.HasPrefix(e.Name, s.Prefix) {
			l.d.count(func(s *Stats) { s.EventsIn++ })
			if l.cfg.OnEvent != nil {
				l.cfg.OnEvent(e)
			}
			return
		}
	}
}

// signal answers Signal start/stop with a piggybacked ACK 2.04; on 0.8 the
// ACK uses up a new device message id (spark-protocol.md §4.2).
func (l *link) signal(m msg.Message) error {
	on := len(m.Query) > 0 && len(m.Query[0]) > 0 && m.Query[0][0] != 0
	id := m.ID
	if l.q.ackUsesID {
		id = l.newID()
	}
	if err := l.write(msg.NewAck(id, []byte{token(m)}, msg.Changed, nil)); err != nil {
		return err
	}
	l.d.count(func(s *Stats) { s.Signals++ })
	if l.cfg.OnSignal != nil {
		l.cfg.OnSignal(on)
	}
	return nil
}

// pingAck answers a server ping with an empty ACK; on 0.8 it uses up a new
// device message id (spark-protocol.md §4.2).
func (l *link) pingAck(m msg.Message) error {
	id := m.ID
	if l.q.ackUsesID {
		id = l.newID()
	}
	if err := l.write(msg.NewEmptyAck(id)); err != nil {
		return err
	}
	l.d.count(func(s *Stats) { s.PingsIn++ })
	return nil
}

// response handles a response to one of the device's requests. The
// firmware reads any 2.05 as the time (spark-protocol.md §4.4 "GetTime").
func (l *link) response(m msg.Message) {
	if m.Code != msg.Content || len(m.Payload) < 4 {
		return
	}
	t := time.Unix(int64(binary.BigEndian.Uint32(m.Payload)), 0).UTC()
	l.d.count(func(s *Stats) { s.ServerTime = t })
	if ch, ok := l.timeWaiters[token(m)]; ok {
		delete(l.timeWaiters, token(m))
		ch <- t
	}
}

// truncate cuts s to at most n bytes, as the firmware's fixed buffers do.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
