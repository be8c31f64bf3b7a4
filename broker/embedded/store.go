package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	badgerdb "github.com/dgraph-io/badger/v4"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// store is the persistence hook: retained messages, client sessions, their
// subscriptions and in-flight QoS messages in a badger database, in mochi's
// own storage records (hooks/storage), so mochi's readStore restores them at
// start.
//
// It is ours rather than mochi's hooks/storage/badger because that hook (as
// of v2.7.9) leaks its GC goroutine (it ranges over a stopped ticker's
// channel, which is never closed) and stores the inline client's
// subscriptions as those of a network client named "inline", which come
// back after a restart as a subscription nobody reads, collecting in-flight
// messages. This one skips the inline client, deletes an expired session's
// subscriptions and in-flight messages with it, and owns its GC goroutine.
//
// In-flight messages of a session that ends with its connection (an MQTT
// 3 clean session, or MQTT 5 session expiry 0) are not written: mochi
// discards them at disconnect and would never restore them, and a badger
// transaction per delivery (a hand-off to badger's writer goroutine, and
// another at the PUBACK) was most of the cost of delivering to a
// subscriber such as Home Assistant or mosquitto_sub.
//
// Writes are queued by mochi's goroutines (client read loops, the inline
// publisher) and applied in order by the store's writer goroutine, many to
// a transaction: a badger transaction is several hand-offs between
// goroutines and a file write, too much to wait for in every retained
// publish (every function call result is one) and every QoS delivery to a
// persistent session. The queue is bounded (storeQueue; a full queue makes
// the hook wait, as a synchronous write did); Stop writes what is queued
// before it closes the database, and the Stored* reads first wait for the
// writes queued before them. A crash of the process loses the writes still
// queued, at most a few milliseconds' worth.
type store struct {
	mqtt.HookBase
	db  *badgerdb.DB
	log *slog.Logger

	ops        chan storeOp  // hooks → writer; never closed; full: the hook waits
	writerDone chan struct{} // closed when the writer goroutine ends

	// ephemeral holds the connected clients whose session ends with their
	// connection (keys *mqtt.Client): added by OnSessionEstablished,
	// removed by OnDisconnect. Decided once at connect: an MQTT 5 client
	// may change its session expiry in DISCONNECT, on its read loop, while
	// deliveries to it run on other goroutines.
	ephemeral sync.Map

	stop chan struct{} // closed by Stop once the queue is written: the goroutines end
	done chan struct{} // closed when the GC goroutine ends
	once sync.Once
}

// storeOp is one queued write.
type storeOp struct {
	kind  storeOpKind
	key   string
	value []byte        // storeSet
	done  chan struct{} // storeSync: closed once the writes queued before it are written
}

type storeOpKind uint8

const (
	storeSet       storeOpKind = iota + 1
	storeDel                   // key
	storeDelPrefix             // every key starting with key
	storeSync                  // a marker: see storeOp.done
)

// Sizes of the write queue and of one transaction.
const (
	storeQueue = 4096
	storeBatch = 1024
)

// Key layout. Client ids and topics are MQTT strings and cannot hold NUL.
const (
	keyClient   = "cl\x00"  // + client id
	keySub      = "sub\x00" // + client id + NUL + filter
	keyInflight = "ifm\x00" // + client id + NUL + packet id
	keyRetained = "ret\x00" // + topic
)

// storeGCInterval is the period of badger's value-log garbage collection.
const storeGCInterval = 10 * time.Minute

func openStore(dir string, log *slog.Logger) (*store, error) {
	opts := badgerdb.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithLoggingLevel(badgerdb.WARNING).
		WithMetricsEnabled(false).
		// Sized for a home broker (tens of MB of retained state at most);
		// badger's defaults reserve 64 MB memtables and a 256 MB cache.
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(8 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2)
	db, err := badgerdb.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded: open store %s: %w", dir, err)
	}
	s := &store{
		db: db, log: log, stop: make(chan struct{}), done: make(chan struct{}),
		ops: make(chan storeOp, storeQueue), writerDone: make(chan struct{}),
	}
	go s.gc()     // ends when Stop closes s.stop; Stop waits for it
	go s.writer() // idem
	return s, nil
}

// writer applies the queued writes in order, as many to a transaction as
// are queued (up to storeBatch), until Stop.
func (s *store) writer() {
	defer close(s.writerDone)
	batch := make([]storeOp, 0, storeBatch)
	for {
		select {
		case op := <-s.ops:
			batch = append(batch, op)
		case <-s.stop:
			return
		}
	more:
		for len(batch) < storeBatch {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break more
			}
		}
		s.apply(batch)
		clear(batch)
		batch = batch[:0]
	}
}

// apply writes batch in order: the sets and deletes in transactions, each
// prefix deletion and sync marker after what came before it is committed.
func (s *store) apply(batch []storeOp) {
	var txn *badgerdb.Txn
	commit := func() {
		if txn == nil {
			return
		}
		if err := txn.Commit(); err != nil {
			s.log.Error("broker store write", "err", err)
		}
		txn = nil
	}
	for _, op := range batch {
		switch op.kind {
		case storeSet, storeDel:
			if txn == nil {
				txn = s.db.NewTransaction(true)
			}
			err := writeOp(txn, op)
			if errors.Is(err, badgerdb.ErrTxnTooBig) {
				commit()
				txn = s.db.NewTransaction(true)
				err = writeOp(txn, op)
			}
			if err != nil {
				s.log.Error("broker store write", "key", op.key, "err", err)
			}
		case storeDelPrefix:
			commit()
			s.deletePrefix(op.key)
		case storeSync:
			commit()
			close(op.done)
		}
	}
	commit()
}

func writeOp(txn *badgerdb.Txn, op storeOp) error {
	if op.kind == storeSet {
		return txn.Set([]byte(op.key), op.value)
	}
	return txn.Delete([]byte(op.key))
}

// enqueue queues a write for the writer; after Stop it drops it.
func (s *store) enqueue(op storeOp) {
	select {
	case s.ops <- op:
	case <-s.stop:
		s.log.Warn("broker store write after stop: dropped", "key", op.key)
	}
}

// sync waits until the writes queued before it are written (at once after
// Stop).
func (s *store) sync() {
	done := make(chan struct{})
	select {
	case s.ops <- storeOp{kind: storeSync, done: done}:
	case <-s.stop:
		return
	}
	select {
	case <-done:
	case <-s.stop:
	}
}

func (s *store) gc() {
	defer close(s.done)
	t := time.NewTicker(storeGCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			for s.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}

// ID implements mqtt.Hook.
func (s *store) ID() string { return "spark2mqtt-store" }

// Provides implements mqtt.Hook.
func (s *store) Provides(b byte) bool {
	return bytes.IndexByte([]byte{
		mqtt.OnSessionEstablished,
		mqtt.OnWillSent,
		mqtt.OnDisconnect,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage,
		mqtt.OnRetainedExpired,
		mqtt.OnQosPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
		mqtt.OnClientExpired,
		mqtt.StoredClients,
		mqtt.StoredSubscriptions,
		mqtt.StoredInflightMessages,
		mqtt.StoredRetainedMessages,
	}, b) >= 0
}

// Stop implements mqtt.Hook: it writes what is queued, ends the writer
// and GC goroutines and closes the database. mochi calls it from
// Server.Close after every client has gone.
func (s *store) Stop() error {
	var err error
	s.once.Do(func() {
		s.sync()
		close(s.stop)
		<-s.writerDone
		<-s.done
		err = s.db.Close()
	})
	return err
}

func (s *store) set(key string, v storage.Serializable) {
	data, err := v.MarshalBinary()
	if err != nil {
		s.log.Error("broker store write", "key", key, "err", err)
		return
	}
	s.enqueue(storeOp{kind: storeSet, key: key, value: data})
}

func (s *store) del(key string) { s.enqueue(storeOp{kind: storeDel, key: key}) }

// delPrefix deletes every key that starts with prefix.
func (s *store) delPrefix(prefix string) { s.enqueue(storeOp{kind: storeDelPrefix, key: prefix}) }

// deletePrefix deletes every key that starts with prefix, now (writer).
func (s *store) deletePrefix(prefix string) {
	var keys [][]byte
	err := s.db.View(func(txn *badgerdb.Txn) error {
		opts := badgerdb.DefaultIteratorOptions
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek([]byte(prefix)); it.ValidForPrefix([]byte(prefix)); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err == nil {
		wb := s.db.NewWriteBatch()
		for _, k := range keys {
			if err = wb.Delete(k); err != nil {
				break
			}
		}
		if err == nil {
			err = wb.Flush()
		} else {
			wb.Cancel()
		}
	}
	if err != nil {
		s.log.Error("broker store delete", "key", prefix, "err", err)
	}
}

// each calls fn with the value of every key that starts with prefix, once
// the writes queued before the call are written.
func (s *store) each(prefix string, fn func([]byte) error) error {
	s.sync()
	return s.db.View(func(txn *badgerdb.Txn) error {
		it := txn.NewIterator(badgerdb.DefaultIteratorOptions)
		defer it.Close()
		for it.Seek([]byte(prefix)); it.ValidForPrefix([]byte(prefix)); it.Next() {
			if err := it.Item().Value(fn); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *store) putClient(cl *mqtt.Client) {
	if cl.Net.Inline {
		return
	}
	p := cl.Properties.Props.Copy(false)
	s.set(keyClient+cl.ID, &storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     p.SessionExpiryInterval,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			AuthenticationMethod:      p.AuthenticationMethod,
			AuthenticationData:        p.AuthenticationData,
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
			ReceiveMaximum:            p.ReceiveMaximum,
			TopicAliasMaximum:         p.TopicAliasMaximum,
			User:                      p.User,
			MaximumPacketSize:         p.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	})
}

func (s *store) forgetClient(id string) {
	s.del(keyClient + id)
	s.delPrefix(keySub + id + "\x00")
	s.delPrefix(keyInflight + id + "\x00")
}

// OnSessionEstablished implements mqtt.Hook.
func (s *store) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if endsWithConnection(cl) {
		s.ephemeral.Store(cl, struct{}{})
	}
	s.putClient(cl)
}

// endsWithConnection reports whether mochi discards cl's session when its
// connection ends (the test of mochi's attachClient).
func endsWithConnection(cl *mqtt.Client) bool {
	p := &cl.Properties
	return (p.ProtocolVersion == 5 && p.Props.SessionExpiryInterval == 0) || (p.ProtocolVersion < 5 && p.Clean)
}

// keepsInflight reports whether cl's in-flight messages are persisted.
// After OnDisconnect (mochi clears an ended session's in-flight messages
// then, each through OnQosDropped) the client's read loop has ended, so its
// properties can be read directly.
func (s *store) keepsInflight(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if _, eph := s.ephemeral.Load(cl); eph {
		return false
	}
	return !cl.Closed() || !endsWithConnection(cl)
}

// OnWillSent implements mqtt.Hook: the client record no longer has a will.
func (s *store) OnWillSent(cl *mqtt.Client, _ packets.Packet) { s.putClient(cl) }

// OnDisconnect implements mqtt.Hook.
func (s *store) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if cl.Net.Inline {
		return
	}
	s.ephemeral.Delete(cl)
	if !expire {
		s.putClient(cl)
		return
	}
	if errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return // the new connection owns the session now
	}
	s.forgetClient(cl.ID)
}

// OnClientExpired implements mqtt.Hook.
func (s *store) OnClientExpired(cl *mqtt.Client) { s.forgetClient(cl.ID) }

// OnSubscribed implements mqtt.Hook: it keeps the granted filters.
func (s *store) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
			continue // refused: nothing to restore
		}
		s.set(keySub+cl.ID+"\x00"+f.Filter, &storage.Subscription{
			ID:                keySub + cl.ID + "\x00" + f.Filter,
			T:                 storage.SubscriptionKey,
			Client:            cl.ID,
			Filter:            f.Filter,
			Qos:               codes[i],
			Identifier:        f.Identifier,
			NoLocal:           f.NoLocal,
			RetainHandling:    f.RetainHandling,
			RetainAsPublished: f.RetainAsPublished,
		})
	}
}

// OnUnsubscribed implements mqtt.Hook.
func (s *store) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	for _, f := range pk.Filters {
		s.del(keySub + cl.ID + "\x00" + f.Filter)
	}
}

func message2store(key, client string, pk packets.Packet) *storage.Message {
	p := pk.Properties.Copy(false)
	return &storage.Message{
		ID:          key,
		Client:      client,
		Origin:      pk.Origin,
		PacketID:    pk.PacketID,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          p.PayloadFormat,
			PayloadFormatFlag:      p.PayloadFormatFlag,
			MessageExpiryInterval:  p.MessageExpiryInterval,
			ContentType:            p.ContentType,
			ResponseTopic:          p.ResponseTopic,
			CorrelationData:        p.CorrelationData,
			SubscriptionIdentifier: p.SubscriptionIdentifier,
			User:                   p.User,
		},
	}
}

// OnRetainMessage implements mqtt.Hook. r is -1 when pk removed the
// retained message (empty payload).
func (s *store) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	key := keyRetained + pk.TopicName
	if r == -1 {
		s.del(key)
		return
	}
	m := message2store(key, "", pk)
	m.T = storage.RetainedKey
	s.set(key, m)
}

// OnRetainedExpired implements mqtt.Hook.
func (s *store) OnRetainedExpired(topic string) { s.del(keyRetained + topic) }

func inflightKey(cl *mqtt.Client, pk packets.Packet) string {
	return keyInflight + cl.ID + "\x00" + pk.FormatID()
}

// OnQosPublish implements mqtt.Hook: a QoS 1 or 2 message is in flight to
// (or an inbound QoS 2 from) cl.
func (s *store) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	if !s.keepsInflight(cl) {
		return
	}
	key := inflightKey(cl, pk)
	m := message2store(key, cl.ID, pk)
	m.T = storage.InflightKey
	m.Sent = sent
	s.set(key, m)
}

// OnQosComplete implements mqtt.Hook.
func (s *store) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if s.keepsInflight(cl) {
		s.del(inflightKey(cl, pk))
	}
}

// OnQosDropped implements mqtt.Hook.
func (s *store) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { s.OnQosComplete(cl, pk) }

// StoredClients implements mqtt.Hook.
func (s *store) StoredClients() ([]storage.Client, error) {
	var v []storage.Client
	err := s.each(keyClient, func(b []byte) error {
		var c storage.Client
		if err := c.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, c)
		return nil
	})
	return v, wrapStore("clients", err)
}

// StoredSubscriptions implements mqtt.Hook.
func (s *store) StoredSubscriptions() ([]storage.Subscription, error) {
	var v []storage.Subscription
	err := s.each(keySub, func(b []byte) error {
		var c storage.Subscription
		if err := c.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, c)
		return nil
	})
	return v, wrapStore("subscriptions", err)
}

// StoredRetainedMessages implements mqtt.Hook.
func (s *store) StoredRetainedMessages() ([]storage.Message, error) {
	return s.messages(keyRetained, "retained")
}

// StoredInflightMessages implements mqtt.Hook.
func (s *store) StoredInflightMessages() ([]storage.Message, error) {
	return s.messages(keyInflight, "inflight")
}

func (s *store) messages(prefix, what string) ([]storage.Message, error) {
	var v []storage.Message
	err := s.each(prefix, func(b []byte) error {
		var m storage.Message
		if err := m.UnmarshalBinary(b); err != nil {
			return err
		}
		v = append(v, m)
		return nil
	})
	return v, wrapStore(what, err)
}

func wrapStore(what string, err error) error {
	if err != nil {
		return fmt.Errorf("embedded: read stored %s: %w", what, err)
	}
	return nil
}

// badgerLogger sends badger's log lines to slog.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) line(level slog.Level, f string, v []any) {
	l.log.Log(context.Background(), level, "badger", "text", strings.TrimSpace(fmt.Sprintf(f, v...)))
}

func (l badgerLogger) Errorf(f string, v ...any)   { l.line(slog.LevelError, f, v) }
func (l badgerLogger) Warningf(f string, v ...any) { l.line(slog.LevelWarn, f, v) }
func (l badgerLogger) Infof(f string, v ...any)    { l.line(slog.LevelInfo, f, v) }
func (l badgerLogger) Debugf(f string, v ...any)   { l.line(slog.LevelDebug, f, v) }
