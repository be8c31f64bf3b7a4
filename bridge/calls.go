package bridge

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Result error texts. They are part of the MQTT contract (doc.go).
const (
	errUnknownDevice   = "unknown device"
	errUnknownFunction = "unknown function"
	errArgTooLong      = "argument too long"
	errSuperseded      = "superseded"
	errExpired         = "expired"
	errOffline         = "device offline"
	errDisconnected    = "device disconnected"
	errTimeout         = "timeout"
	errQueueFull       = "queue full"
	errInterrupted     = "interrupted: the bridge stopped while delivering the call; the device may have run it"
	errStopping        = "interrupted: the bridge stopped during the call; the device may have run it"
)

// maxRequest bounds a /call payload.
const maxRequest = 8192

// maxTransaction bounds the transaction echoed in results.
const maxTransaction = 256

// maxFnName is the longest function name a device may have
// (spark-protocol.md §4.6: 12 on the Core, 64 on newer Photons).
const maxFnName = 64

// call is one function call request.
type call struct {
	seq       uint64
	fn, arg   string
	tx        json.RawMessage // transaction, echoed verbatim; nil when absent
	ttl       time.Duration   // how long it may be held; 0: not at all
	queuedAt  time.Time
	expiresAt time.Time
	resp      string // MQTT 5 response topic
	corr      []byte
	held      bool // published as pending at least once (guarded by dev.mu)
}

// callRequest is the JSON of spark/D/fn/NAME/call.
type callRequest struct {
	Arg         *string         `json:"arg"`
	Transaction json.RawMessage `json:"transaction"`
	TTL         json.RawMessage `json:"ttl"`
}

// parseCallRequest decodes a /call payload strictly. The error names the
// problem for the user. The call is returned even with an error, carrying
// the transaction when it could be read, so the error result echoes it.
func (b *Bridge) parseCallRequest(p []byte) (*call, error) {
	c := &call{ttl: b.cfg.QueueTTL}
	if len(p) > maxRequest {
		return c, fmt.Errorf("larger than %d bytes", maxRequest)
	}
	c.tx = peekTransaction(p)
	var req callRequest
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return c, jsonProblem(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return c, errors.New("data after the JSON object")
	}
	if req.Arg != nil {
		c.arg = *req.Arg
	}
	if len(req.Transaction) > 0 && c.tx == nil && !bytes.Equal(req.Transaction, []byte("null")) {
		return c, fmt.Errorf(`"transaction" must be a string or a number of at most %d bytes`, maxTransaction)
	}
	if len(req.TTL) > 0 && !bytes.Equal(req.TTL, []byte("null")) {
		ttl, err := b.parseTTL(req.TTL)
		if err != nil {
			return c, err
		}
		c.ttl = ttl
	}
	return c, nil
}

// peekTransaction returns the request's transaction, compacted, when the
// payload is a JSON object whose "transaction" is a string or a number of
// at most maxTransaction bytes; else nil.
func peekTransaction(p []byte) json.RawMessage {
	var obj map[string]json.RawMessage
	if json.Unmarshal(p, &obj) != nil {
		return nil
	}
	raw, ok := obj["transaction"]
	if !ok {
		return nil
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return nil
	}
	switch v.(type) {
	case string, float64:
	default:
		return nil
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil || buf.Len() > maxTransaction {
		return nil
	}
	return buf.Bytes()
}

// parseTTL checks a ttl in whole seconds: 0 (do not hold) up to MaxTTL.
func (b *Bridge) parseTTL(raw json.RawMessage) (time.Duration, error) { // raw is not empty
	maxS := int64(b.cfg.MaxTTL / time.Second)
	var n json.Number
	if raw[0] == '"' || json.Unmarshal(raw, &n) != nil {
		return 0, errors.New(`"ttl" must be a number of seconds`)
	}
	s, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil {
		if f, ferr := strconv.ParseFloat(n.String(), 64); ferr == nil && f < 0 {
			return 0, errors.New(`"ttl" is negative`)
		}
		return 0, fmt.Errorf(`"ttl" %s is not a whole number of seconds from 0 to %d`, n, maxS)
	}
	switch {
	case s < 0:
		return 0, errors.New(`"ttl" is negative`)
	case s > maxS:
		return 0, fmt.Errorf(`"ttl" %d is over the maximum of %d seconds`, s, maxS)
	}
	return time.Duration(s) * time.Second, nil
}

// jsonProblem turns a decoding error into a message for the user.
func jsonProblem(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("JSON syntax error at byte %d: %s", se.Offset, se.Error())
	case errors.As(err, &te) && te.Field == "":
		return errors.New("want a JSON object")
	case errors.As(err, &te):
		want := te.Type.String()
		switch te.Field {
		case "arg":
			want = "a string"
		}
		return fmt.Errorf("%q must be %s, not a JSON %s", te.Field, want, te.Value)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("empty or truncated JSON")
	}
	// Unknown fields: `json: unknown field "x"`.
	return errors.New(trimJSONPrefix(err.Error()))
}

func trimJSONPrefix(s string) string {
	if r, ok := bytes.CutPrefix([]byte(s), []byte("json: ")); ok {
		return string(r)
	}
	return s
}

// result is the JSON of fn/NAME/result and of the MQTT 5 response.
type result struct {
	Arg         string          `json:"arg"`
	ReturnValue *int32          `json:"return_value,omitempty"`
	Error       string          `json:"error,omitempty"`
	Queued      bool            `json:"queued,omitempty"`
	ExpiresAt   *time.Time      `json:"expires_at,omitempty"`
	Transaction json.RawMessage `json:"transaction,omitempty"`
}

// pendingCall is the JSON of fn/NAME/pending: a call held for an offline
// device. It carries what is needed to deliver it after a restart.
type pendingCall struct {
	Device          string          `json:"device"`
	Arg             string          `json:"arg"`
	Transaction     json.RawMessage `json:"transaction,omitempty"`
	QueuedAt        time.Time       `json:"queued_at"`
	ExpiresAt       time.Time       `json:"expires_at"`
	DeliveringAt    *time.Time      `json:"delivering_at,omitempty"`
	ResponseTopic   string          `json:"response_topic,omitempty"`
	CorrelationData []byte          `json:"correlation_data,omitempty"`
}

func (c *call) pending(id string, delivering *time.Time) []byte {
	p, _ := json.Marshal(pendingCall{
		Device: id, Arg: c.arg, Transaction: c.tx, QueuedAt: c.queuedAt.UTC(), ExpiresAt: c.expiresAt.UTC(),
		DeliveringAt: delivering, ResponseTopic: c.resp, CorrelationData: c.corr,
	})
	return p
}

// publishResult publishes r on base/D/fn/NAME/result (retained when
// retain) and, when the request carried one, on its MQTT 5 response topic.
func (b *Bridge) publishResult(ctx context.Context, level string, c *call, r result, retain bool) {
	r.Arg = c.arg
	r.Transaction = c.tx
	p, _ := json.Marshal(r)
	_ = b.publish(ctx, b.t.result(level, c.fn), p, retain)
	if c.resp != "" {
		_ = b.publishMsg(ctx, broker.Message{Topic: c.resp, Payload: p, QoS: 1, CorrelationData: c.corr})
	}
}

// reject publishes an error result for a request refused at input. Such
// results are not retained: they are not an outcome of the function, and a
// typo in a device or function name must not leave retained topics behind.
func (b *Bridge) reject(ctx context.Context, in inbound, c *call, msg string) {
	b.stats.callsError.Add(1)
	level := in.d
	if d := b.lookupQuiet(in.d); d != nil {
		level = d.topic
	}
	c.resp, c.corr = in.resp, in.corr
	b.lim.warn(b.log, "reject:"+msg, "call refused", "device", in.d, "fn", c.fn, "err", msg)
	b.publishResult(ctx, level, c, result{Error: msg}, false)
}

// lookupQuiet resolves a level to an existing device state only.
func (b *Bridge) lookupQuiet(level string) *dev {
	id, ok := b.cfg.Devices.ID(level)
	if !ok {
		var err error
		if id, err = parseID(level); err != nil {
			return nil
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.devs[id]
}

// acceptCall checks a call and queues it for its device: run by the
// device's worker when online, held (retained pending + queued result) when
// offline. For each function only the newest waiting call is kept; the one
// it replaces gets the error result "superseded".
func (b *Bridge) acceptCall(ctx context.Context, in inbound, c *call) {
	c.resp, c.corr = in.resp, in.corr
	c.queuedAt = in.at
	c.expiresAt = in.at.Add(c.ttl)
	d := b.lookup(in.d)
	if d == nil {
		b.reject(ctx, in, c, errUnknownDevice)
		return
	}
	if len(c.fn) > maxFnName {
		b.reject(ctx, in, c, errUnknownFunction)
		return
	}

	d.pubMu.Lock()
	d.mu.Lock()
	s := d.sess
	online := s != nil
	var refuse string
	switch {
	case len(c.arg) > d.info.maxArg():
		refuse = errArgTooLong
	case !online && c.ttl == 0:
		refuse = errOffline
	case !online && d.desc != nil && !slices.Contains(d.desc.Functions, c.fn):
		refuse = errUnknownFunction
	case d.calls[c.fn] == nil && len(d.calls) >= maxQueued:
		refuse = errQueueFull
	}
	if refuse != "" {
		d.mu.Unlock()
		d.pubMu.Unlock()
		b.reject(ctx, in, c, refuse)
		return
	}
	defer d.pubMu.Unlock()
	old := d.calls[c.fn]
	c.seq = b.seq.Add(1)
	c.held = !online
	d.calls[c.fn] = c
	d.mu.Unlock()

	if old != nil {
		b.stats.callsSuperseded.Add(1)
		b.publishResult(ctx, d.topic, old, result{Error: errSuperseded}, false)
	}
	switch {
	case c.held:
		b.holdLocked(ctx, d, c)
	case old != nil && d.pendingOwner[c.fn] == old:
		_ = b.publish(ctx, b.t.pending(d.topic, c.fn), nil, true)
		delete(d.pendingOwner, c.fn)
	}
	if online {
		s.kick()
	}
}

// holdLocked publishes c as the retained pending call of its function and
// its queued result. d.pubMu is held.
func (b *Bridge) holdLocked(ctx context.Context, d *dev, c *call) {
	b.stats.callsQueued.Add(1)
	_ = b.publish(ctx, b.t.pending(d.topic, c.fn), c.pending(d.id, nil), true)
	d.pendingOwner[c.fn] = c
	exp := c.expiresAt.UTC()
	b.publishResult(ctx, d.topic, c, result{Queued: true, ExpiresAt: &exp}, true)
}

// holdWaiting turns the calls still waiting for a device that went offline
// into held calls, in the order they were made.
func (b *Bridge) holdWaiting(ctx context.Context, d *dev) {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	d.mu.Lock()
	if d.sess != nil {
		d.mu.Unlock()
		return
	}
	var hold []*call
	for _, c := range d.calls {
		if !c.held {
			c.held = true
			hold = append(hold, c)
		}
	}
	d.mu.Unlock()
	slices.SortFunc(hold, func(a, b *call) int { return cmp.Compare(a.seq, b.seq) })
	for _, c := range hold {
		b.holdLocked(ctx, d, c)
	}
}

// finishCall publishes the outcome of a call taken off the queue and clears
// its pending message if it still owns it.
func (b *Bridge) finishCall(ctx context.Context, d *dev, c *call, r result, retain bool) {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	b.publishResult(ctx, d.topic, c, r, retain)
	if d.pendingOwner[c.fn] == c {
		_ = b.publish(ctx, b.t.pending(d.topic, c.fn), nil, true)
		delete(d.pendingOwner, c.fn)
	}
}

// expire ends the waiting calls whose ttl has run out.
func (b *Bridge) expire(ctx context.Context) {
	now := b.now()
	b.mu.Lock()
	devs := make([]*dev, 0, len(b.devs))
	for _, d := range b.devs {
		devs = append(devs, d)
	}
	b.mu.Unlock()
	for _, d := range devs {
		d.mu.Lock()
		n := len(d.calls)
		d.mu.Unlock()
		if n == 0 {
			continue
		}
		b.expireDev(ctx, d, now)
	}
}

func (b *Bridge) expireDev(ctx context.Context, d *dev, now time.Time) {
	d.pubMu.Lock()
	defer d.pubMu.Unlock()
	d.mu.Lock()
	var gone []*call
	for fn, c := range d.calls {
		if !now.Before(c.expiresAt) {
			gone = append(gone, c)
			delete(d.calls, fn)
		}
	}
	d.mu.Unlock()
	slices.SortFunc(gone, func(a, b *call) int { return cmp.Compare(a.seq, b.seq) })
	for _, c := range gone {
		b.stats.callsExpired.Add(1)
		b.log.Info("held call expired", "device", d.id, "fn", c.fn)
		b.publishResult(ctx, d.topic, c, result{Error: errExpired}, true)
		if d.pendingOwner[c.fn] == c {
			_ = b.publish(ctx, b.t.pending(d.topic, c.fn), nil, true)
			delete(d.pendingOwner, c.fn)
		}
	}
}
