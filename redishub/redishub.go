package redishub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

var (
	_ relay.Relay              = (*Relay)(nil)
	_ relay.ListenerServer     = (*Relay)(nil)
	_ relay.MaxListenersSetter = (*Relay)(nil)
	_ relay.StatsReporter      = (*Relay)(nil)
)

// ErrRedis is wrapped, beside the cause, by the errors of the relay's
// requests that Redis did not answer or answered with an error: Redis is
// down or unreachable, or a deadline passed. Nothing was published then.
var ErrRedis = errors.New("redishub: redis request failed")

// Defaults for the zero values of [Options], as its fields document them.
const (
	defaultPrefix       = "sessionpush:hub:"
	defaultSyncInterval = time.Second
	defaultReplicaGrace = 30 * time.Second
	defaultCountTTL     = 30 * time.Second
	tombstoneTTL        = 10 * time.Minute
	subscribeTimeout    = 10 * time.Second
	pingEvery           = 15 * time.Second
	syncBatch           = 256
)

// Options configures a [Relay]. The zero value is ready to use.
type Options struct {
	// Prefix starts every key and notification channel of the relay, so
	// that several relays or applications can share one Redis. It must not
	// contain '{' or '}': each channel's keys take the channel ID as their
	// Redis Cluster hash tag. Zero means "sessionpush:hub:".
	Prefix string

	// Hub configures the listener side of each instance and the channels'
	// buffers, as for the embedded relay ([hub.Options]): BufferLength and
	// MessageTTL are the buffer kept in Redis (and in each instance's
	// replica), MaxListeners the cap of a channel's listeners across
	// instances, MaxMessageSize the largest body Publish takes; the
	// transports' timeouts, heartbeat and origins apply to each instance's
	// listeners. Its Logger defaults to Logger.
	Hub hub.Options

	// SyncInterval is how often an instance writes its changed listener
	// counts to Redis, reads the other instances' (for the cap), and
	// closes the replicas it no longer needs. Zero means one second.
	SyncInterval time.Duration

	// ReplicaGrace is how long an instance keeps a channel's replica (and
	// its subscription) after its last local listener left, so that a
	// long-poll's next request or a reconnect finds it. Zero means 30
	// seconds.
	ReplicaGrace time.Duration

	// CountTTL is how long an instance's listener counts stay valid in
	// Redis without being written again: the counts of an instance that
	// stopped without Shutdown count for at most this long. Zero means 30
	// seconds.
	CountTTL time.Duration

	// Logger records the link to Redis going down and coming back. Nil
	// means slog.Default().
	Logger *slog.Logger
}

// Relay is a push relay shared by several application instances through
// Redis. See the package documentation. Create it with [New] and stop it
// with [Relay.Shutdown]; it is safe for concurrent use.
type Relay struct {
	client   redis.UniversalClient
	hub      *hub.Hub
	opts     Options
	log      *slog.Logger
	prefix   string
	instance string // this Relay's name in the channels' listener counts
	bufLen   int    // MAXLEN of the streams
	ttl      int64  // message TTL in ms; 0: forever
	maxSize  int
	defCap   int

	ps    *redis.PubSub
	subMu sync.Mutex // orders a channel's Subscribe after an earlier replica's Unsubscribe

	mu       sync.Mutex
	replicas map[string]*replica
	closed   bool
	linkDown bool // the subscription link failed: catch every replica up once it is back

	stop    chan struct{}
	wg      sync.WaitGroup
	catchUp chan *replica
	queued  map[*replica]bool // in catchUp's backlog, under mu
	backlog []*replica

	stats stats
}

// replica is one channel's replica on this instance: the hub's channel, its
// subscription, and the notifications held while it catches up.
type replica struct {
	id     string
	notify string // its notification channel

	// Under Relay.mu.
	pending   int       // ServeListener calls between admission and the hub
	idleSince time.Time // when the hub's channel was first seen without listeners; zero: it has some
	removed   bool

	opened chan struct{} // closed once the replica is open, or failed (err)
	err    error

	subscribed chan struct{} // closed at the first subscription confirmation
	confirmed  bool          // under Relay.mu

	mu      sync.Mutex // orders the notifications, the snapshots and the close
	ready   bool       // notifications are applied as they come; else queued
	queue   []string
	gone    bool // closed
	cap     int  // the channel's cap; negative: none
	others  int  // listeners of other instances, as last read
	synced  int  // the count last written; -1: never
	syncAt  time.Time
	lastReq time.Time // the requested time last written
}

// New returns a Relay on client, which may be a single-node, Sentinel
// (failover) or Cluster client, and starts its two goroutines: the reader
// of its subscriptions and the syncer of its listener counts. The Relay does
// not own client: close it after [Relay.Shutdown].
func New(client redis.UniversalClient, opts Options) (*Relay, error) {
	if opts.Prefix == "" {
		opts.Prefix = defaultPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("redishub: Options.Prefix %q must not contain '{' or '}'", opts.Prefix)
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&opts.SyncInterval, defaultSyncInterval)
	def(&opts.ReplicaGrace, defaultReplicaGrace)
	def(&opts.CountTTL, defaultCountTTL)
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ho := opts.Hub
	if ho.Logger == nil {
		ho.Logger = log
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Relay{
		client: client, hub: hub.New(ho), opts: opts, log: log, prefix: opts.Prefix,
		instance: hex.EncodeToString(b[:]),
		replicas: make(map[string]*replica),
		stop:     make(chan struct{}),
		catchUp:  make(chan *replica, 1),
		queued:   make(map[*replica]bool),
	}
	switch n := ho.BufferLength; {
	case n == 0:
		r.bufLen = 10
	case n > 0:
		r.bufLen = n
	}
	switch d := ho.MessageTTL; {
	case d == 0:
		r.ttl = time.Hour.Milliseconds()
	case d > 0:
		r.ttl = max(d.Milliseconds(), 1)
	}
	r.maxSize = ho.MaxMessageSize
	if r.maxSize == 0 {
		r.maxSize = 1 << 20
	}
	r.defCap = ho.MaxListeners
	if r.defCap == 0 {
		r.defCap = 10
	}
	r.ps = client.Subscribe(context.Background())
	r.wg.Add(3)
	go r.read()
	go r.syncLoop()
	go r.catchUpLoop()
	return r, nil
}

// Hub returns the instance's local hub, whose channels are the replicas of
// the channels this instance has listeners for. Use it for its Stats; its
// channels are the Relay's to open, publish to and close.
func (r *Relay) Hub() *hub.Hub { return r.hub }

// keys returns the keys of channel id: meta, stream, listener counts,
// tombstone.
func (r *Relay) keys(id string) []string {
	base := r.prefix + "{" + id + "}:"
	return []string{base + "m", base + "s", base + "l", base + "x"}
}

func (r *Relay) notifyName(id string) string { return r.prefix + "{" + id + "}:n" }

// channelOf returns the channel ID of a notification channel's name.
func (r *Relay) channelOf(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, r.prefix+"{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "}:n")
}

// Open creates the channel in Redis, or keeps it if it is open, and returns
// its cursor.
func (r *Relay) Open(ctx context.Context, channel string) (string, error) {
	if err := r.check(ctx, "open", channel); err != nil {
		return "", err
	}
	last, err := openScript.Run(ctx, r.client, r.keys(channel), r.defCap).Text()
	if err != nil {
		return "", r.fail("open", channel, err)
	}
	return cursor(last), nil
}

// Publish gives m the channel's next ID in Redis, appends it to the
// channel's stream and notifies every instance with listeners of the
// channel: one script, one round trip to Redis, whatever the number of
// listeners and instances. Receipt.Listeners counts the listeners of every
// instance, as they last wrote their counts (see Options.SyncInterval).
// Errors are those of [hub.Hub.Publish], and errors wrapping [ErrRedis]
// when Redis fails (or [relay.ErrRelayFull] when Redis is out of memory).
func (r *Relay) Publish(ctx context.Context, channel string, m relay.Message) (relay.Receipt, error) {
	if err := r.check(ctx, "publish", channel); err != nil {
		return relay.Receipt{}, err
	}
	if strings.ContainsAny(m.Event, "\r\n") {
		return relay.Receipt{}, opError("publish", channel, errors.New("event name contains CR or LF"))
	}
	if m.Event == "gap" {
		return relay.Receipt{}, opError("publish", channel, fmt.Errorf("%w: %q", hub.ErrReservedEvent, m.Event))
	}
	if r.maxSize >= 0 && len(m.Body) > r.maxSize {
		return relay.Receipt{}, opError("publish", channel,
			fmt.Errorf("%w: %d bytes, limit %d", relay.ErrMessageTooLarge, len(m.Body), r.maxSize))
	}
	res, err := publishScript.Run(ctx, r.client, r.keys(channel), r.notifyName(channel), r.bufLen, r.ttl,
		m.Event, m.ContentType, m.Body).Slice()
	if err != nil {
		return relay.Receipt{}, r.fail("publish", channel, err)
	}
	if len(res) != 3 {
		return relay.Receipt{}, opError("publish", channel, fmt.Errorf("%w: unexpected answer %v", ErrRedis, res))
	}
	id, _ := res[0].(string)
	n, _ := res[1].(int64)
	q, _ := res[2].(int64)
	r.stats.published.Add(1)
	return relay.Receipt{ID: cursor(id), Listeners: int(n), Queued: int(q)}, nil
}

// Info reports on the channel: its unexpired buffered messages and newest
// ID as Redis holds them, the listeners of this instance now plus those of
// the others as they last wrote them, and the time since a listener last
// connected to any instance (as written by the others every
// Options.SyncInterval).
func (r *Relay) Info(ctx context.Context, channel string) (relay.Info, error) {
	if err := r.check(ctx, "info", channel); err != nil {
		return relay.Info{}, err
	}
	res, err := infoScript.Run(ctx, r.client, r.keys(channel), r.instance, r.ttl).Slice()
	if err != nil {
		return relay.Info{}, r.fail("info", channel, err)
	}
	if len(res) != 4 {
		return relay.Info{}, opError("info", channel, fmt.Errorf("%w: unexpected answer %v", ErrRedis, res))
	}
	last, _ := res[0].(string)
	reqs, _ := res[1].(string)
	others, _ := res[2].(int64)
	msgs, _ := res[3].(int64)
	req, _ := strconv.ParseInt(reqs, 10, 64)
	var requested time.Time
	if req > 0 {
		requested = time.UnixMilli(req)
	}
	local, lreq, _ := r.hub.ListenerCount(channel)
	if lreq.After(requested) {
		requested = lreq
	}
	since := time.Duration(-1)
	if !requested.IsZero() {
		since = max(time.Since(requested), 0)
	}
	return relay.Info{Messages: int(msgs), Listeners: int(others) + local, LastMessageID: cursor(last), SinceRequest: since}, nil
}

// Close deletes the channel and its buffer from Redis and tells every
// instance, which ends the channel's listeners as the embedded relay does
// (long-poll 410, EventSource ":410: 410 Gone", WebSocket close 1001). It
// returns an error wrapping [relay.ErrChannelNotFound] if the channel was
// not open; the instances are told even then.
func (r *Relay) Close(ctx context.Context, channel string) error {
	if err := r.check(ctx, "close", channel); err != nil {
		return err
	}
	open, err := closeScript.Run(ctx, r.client, r.keys(channel), r.notifyName(channel), tombstoneTTL.Milliseconds()).Int64()
	if err != nil {
		return r.fail("close", channel, err)
	}
	r.mu.Lock()
	rp := r.replicas[channel]
	r.mu.Unlock()
	if rp != nil {
		rp.mu.Lock()
		r.apply(rp, "x") // at once here; the others hear it from Redis
		rp.mu.Unlock()
	}
	if open == 0 {
		return opError("close", channel, relay.ErrChannelNotFound)
	}
	return nil
}

// SetMaxListeners sets the cap of the open channel's listeners, across
// instances: n at most, none when n is negative, Options.Hub.MaxListeners
// when n is zero. Every instance hears of it at once. It returns an error
// wrapping [relay.ErrChannelNotFound] if the channel is not open.
func (r *Relay) SetMaxListeners(channel string, n int) error {
	if err := relay.ValidateID(channel); err != nil {
		return opError("set max listeners", channel, err)
	}
	if n == 0 {
		n = r.defCap
	}
	if n < 0 {
		n = -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := capScript.Run(ctx, r.client, r.keys(channel)[:1], r.notifyName(channel), n).Err(); err != nil {
		return r.fail("set max listeners", channel, err)
	}
	r.mu.Lock()
	rp := r.replicas[channel]
	r.mu.Unlock()
	if rp != nil {
		rp.mu.Lock()
		r.apply(rp, "c"+strconv.Itoa(n))
		rp.mu.Unlock()
	}
	return nil
}

// ServeListener serves one listener of channel as the embedded relay does
// ([hub.Hub.ServeListener]), from this instance's replica of the channel,
// which it opens first if this instance has none: it subscribes to the
// channel's notifications, then reads the channel's state and buffer from
// Redis. It answers 403 if the channel is not open in Redis or has as many
// listeners as its cap, across instances, and 503 if Redis cannot be
// reached to open the replica (listeners of a channel that already has a
// replica here need no Redis).
func (r *Relay) ServeListener(w http.ResponseWriter, req *http.Request, channel string) {
	if req.Method != http.MethodGet || relay.ValidateID(channel) != nil {
		r.hub.ServeListener(w, req, channel) // refused as the hub refuses
		return
	}
	rp := r.acquire(channel)
	if rp == nil { // after Shutdown
		r.hub.ServeListener(w, req, channel)
		return
	}
	defer r.release(rp)
	select {
	case <-rp.opened:
	case <-req.Context().Done():
		return
	}
	if rp.err != nil && !errors.Is(rp.err, relay.ErrChannelNotFound) {
		r.stats.unavailable.Add(1)
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Retry-After", "1")
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	r.hub.ServeListener(w, req, channel) // 403 if the channel is not open
}

// acquire returns the channel's replica, opening it if there is none, and
// counts the caller in it until release; nil after Shutdown.
func (r *Relay) acquire(channel string) *replica {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	rp := r.replicas[channel]
	if rp == nil {
		rp = &replica{id: channel, notify: r.notifyName(channel), opened: make(chan struct{}),
			subscribed: make(chan struct{}), synced: -1, cap: r.defCap}
		r.replicas[channel] = rp
		rp.pending++
		r.wg.Add(1)
		r.mu.Unlock()
		go r.open(rp)
		return rp
	}
	rp.pending++
	r.mu.Unlock()
	return rp
}

func (r *Relay) release(rp *replica) {
	r.mu.Lock()
	rp.pending--
	r.mu.Unlock()
}

// open opens rp: subscribe, await the confirmation (from then on nothing
// published is missed: it is queued), read the snapshot, open the hub's
// replica with it, then apply what was queued meanwhile, in order, each
// message once.
func (r *Relay) open(rp *replica) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
	defer cancel()
	r.subMu.Lock()
	err := r.ps.Subscribe(ctx, rp.notify)
	r.subMu.Unlock()
	if err == nil {
		select {
		case <-rp.subscribed:
		case <-ctx.Done():
			err = ctx.Err()
		case <-r.stop:
			err = relay.ErrClosed
		}
	}
	var snap *snapshot
	if err == nil {
		snap, err = r.snapshot(ctx, rp.id)
		if err == nil && (snap == nil || snap.closed) {
			err = opError("listen", rp.id, relay.ErrChannelNotFound)
		}
	}
	if err == nil {
		rp.mu.Lock()
		if _, err = r.hub.OpenReplica(rp.id, snap.dropped); err == nil {
			r.catchUpWith(rp, snap)
			rp.ready = true
			for _, n := range rp.queue {
				r.apply(rp, n)
			}
			rp.queue = nil
		}
		rp.mu.Unlock()
	}
	if err != nil {
		r.stats.openFailed.Add(1)
		rp.err = err
		r.remove(rp)
	}
	close(rp.opened)
}

// remove forgets rp and unsubscribes from its notifications. The hub's
// channel, if any, is closed by the caller.
func (r *Relay) remove(rp *replica) {
	r.mu.Lock()
	r.forget(rp)
	r.mu.Unlock()
	r.unsubscribe(rp)
}

// forget takes rp out of the replicas, so that the next listener of its
// channel opens a new one. The caller holds r.mu.
func (r *Relay) forget(rp *replica) {
	rp.removed = true
	if r.replicas[rp.id] == rp {
		delete(r.replicas, rp.id)
	}
}

// unsubscribe ends the subscription of a forgotten replica, unless a newer
// replica of the channel has it.
func (r *Relay) unsubscribe(rp *replica) {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	r.mu.Lock()
	skip := r.closed || r.replicas[rp.id] != nil
	r.mu.Unlock()
	if !skip {
		ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
		_ = r.ps.Unsubscribe(ctx, rp.notify)
		cancel()
	}
}

// snapshot is a channel's state in Redis, as snapshotScript returns it.
type snapshot struct {
	closed  bool // tombstone: closed; nil snapshot: unknown (Redis lost it)
	last    relay.MessageID
	dropped relay.MessageID
	cap     int
	others  int
	entries []redis.XMessage
}

func (r *Relay) snapshot(ctx context.Context, id string) (*snapshot, error) {
	cmd := snapshotScript.Run(ctx, r.client, r.keys(id), r.instance)
	return parseSnapshot(id, cmd)
}

func parseSnapshot(id string, cmd *redis.Cmd) (*snapshot, error) {
	v, err := cmd.Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redishub: snapshot %q: %w: %w", id, ErrRedis, err)
	}
	a, _ := v.([]any)
	if len(a) == 0 {
		return &snapshot{closed: true}, nil
	}
	if len(a) != 5 {
		return nil, fmt.Errorf("redishub: snapshot %q: %w: unexpected answer", id, ErrRedis)
	}
	s := &snapshot{}
	s.last = streamID(a[0])
	s.dropped = streamID(a[3])
	capStr, _ := a[1].(string)
	s.cap, _ = strconv.Atoi(capStr)
	o, _ := a[2].(int64)
	s.others = int(o)
	entries, _ := a[4].([]any)
	for _, e := range entries {
		ea, _ := e.([]any)
		if len(ea) != 2 {
			continue
		}
		eid, _ := ea[0].(string)
		fields, _ := ea[1].([]any)
		vals := make(map[string]any, len(fields)/2)
		for i := 0; i+1 < len(fields); i += 2 {
			k, _ := fields[i].(string)
			vals[k] = fields[i+1]
		}
		s.entries = append(s.entries, redis.XMessage{ID: eid, Values: vals})
	}
	return s, nil
}

// catchUpWith brings rp's hub channel up to snap: what the stream dropped
// is a gap, its entries are applied (those the replica has are ignored),
// and the cap is set. The caller holds rp.mu.
func (r *Relay) catchUpWith(rp *replica, snap *snapshot) {
	if err := r.hub.DropUntil(rp.id, snap.dropped); err != nil {
		return
	}
	for _, e := range snap.entries {
		id := streamID(e.ID)
		str := func(k string) string { s, _ := e.Values[k].(string); return s }
		p, _ := strconv.ParseInt(str("p"), 10, 64)
		m := relay.Message{Body: []byte(str("b")), ContentType: str("t"), Event: str("e")}
		if ok, _ := r.hub.PublishAt(rp.id, id, time.UnixMilli(p), m); ok {
			r.stats.caughtUp.Add(1)
		}
	}
	rp.cap, rp.others = snap.cap, snap.others
	r.limit(rp)
}

// limit sets the hub's listener limit of rp: its cap less the listeners of
// the other instances. The caller holds rp.mu.
func (r *Relay) limit(rp *replica) {
	n := -1
	if rp.cap >= 0 {
		n = max(rp.cap-rp.others, 0)
	}
	_ = r.hub.SetListenerLimit(rp.id, n)
}

// apply applies notification n to rp, or queues it while rp catches up.
// The caller holds rp.mu.
func (r *Relay) apply(rp *replica, n string) {
	if rp.gone {
		return
	}
	if !rp.ready {
		rp.queue = append(rp.queue, n)
		return
	}
	switch {
	case n == "x":
		rp.gone = true
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.hub.Close(ctx, rp.id)
		cancel()
		r.stats.closed.Add(1)
		r.wg.Add(1)
		go func() { // off the reader's goroutine, and outside rp.mu
			defer r.wg.Done()
			r.remove(rp)
		}()
	case strings.HasPrefix(n, "c"):
		if c, err := strconv.Atoi(n[1:]); err == nil {
			rp.cap = c
			r.limit(rp)
		}
	case strings.HasPrefix(n, "m"):
		id, published, m, ok := parseNote(n[1:])
		if !ok {
			r.log.Warn("redishub: malformed notification", "channel", rp.id)
			return
		}
		if ok, _ := r.hub.PublishAt(rp.id, id, published, m); ok {
			r.stats.notified.Add(1)
		}
	}
}

// parseNote parses "<sec>-<tag> <ms> <len(event)> <len(type)> <event><type><body>".
func parseNote(s string) (relay.MessageID, time.Time, relay.Message, bool) {
	var f [4]string
	for i := range f {
		j := strings.IndexByte(s, ' ')
		if j < 0 {
			return relay.MessageID{}, time.Time{}, relay.Message{}, false
		}
		f[i], s = s[:j], s[j+1:]
	}
	id := streamID(f[0])
	ms, err1 := strconv.ParseInt(f[1], 10, 64)
	ne, err2 := strconv.Atoi(f[2])
	nt, err3 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil || err3 != nil || ne < 0 || nt < 0 || ne+nt > len(s) {
		return relay.MessageID{}, time.Time{}, relay.Message{}, false
	}
	m := relay.Message{Event: s[:ne], ContentType: s[ne : ne+nt], Body: []byte(s[ne+nt:])}
	return id, time.UnixMilli(ms), m, true
}

// streamID parses a stream entry ID "<sec>-<tag>"; anything else is zero.
func streamID(v any) relay.MessageID {
	s, _ := v.(string)
	sec, tag, ok := strings.Cut(s, "-")
	if !ok {
		return relay.MessageID{}
	}
	a, err1 := strconv.ParseInt(sec, 10, 64)
	b, err2 := strconv.ParseInt(tag, 10, 64)
	if err1 != nil || err2 != nil {
		return relay.MessageID{}
	}
	return relay.MessageID{Time: a, Tag: b}
}

// cursor turns a stream ID into a message ID, "0-0" into relay.NoCursor.
func cursor(streamID string) string {
	return strings.Replace(streamID, "-", ":", 1)
}

// read receives the subscriptions' confirmations and notifications until
// Shutdown. When the link to Redis fails, go-redis dials again and
// subscribes again to every channel; each confirmation that follows a
// failure sends its replica to catch up from the stream.
func (r *Relay) read() {
	defer r.wg.Done()
	ctx := context.Background()
	backoff := 50 * time.Millisecond
	for {
		v, err := r.ps.ReceiveTimeout(ctx, pingEvery)
		if err != nil {
			select {
			case <-r.stop:
				return
			default:
			}
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				_ = r.ps.Ping(ctx)
				continue
			}
			r.down(err)
			select {
			case <-r.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		switch v := v.(type) {
		case *redis.Subscription:
			if v.Kind == "subscribe" {
				r.confirmed(v.Channel)
			}
		case *redis.Message:
			id, ok := r.channelOf(v.Channel)
			if !ok {
				continue
			}
			r.mu.Lock()
			rp := r.replicas[id]
			r.mu.Unlock()
			if rp != nil {
				rp.mu.Lock()
				r.apply(rp, v.Payload)
				rp.mu.Unlock()
			}
		}
	}
}

// down notes that the subscription link failed: what is published until
// it is back reaches no replica, so each catches up at its next
// confirmation.
func (r *Relay) down(err error) {
	r.mu.Lock()
	was := r.linkDown
	r.linkDown = true
	for _, rp := range r.replicas {
		rp.confirmed = false
	}
	r.mu.Unlock()
	r.stats.linkDown.Add(1)
	if !was {
		r.log.Warn("redishub: subscription link to Redis lost; listeners stay, and catch up when it is back", "err", err)
	}
}

// confirmed handles a subscription's confirmation: the first one of a
// replica lets its opening go on; one after the link failed sends it to
// catch up.
func (r *Relay) confirmed(name string) {
	id, ok := r.channelOf(name)
	if !ok {
		return
	}
	r.mu.Lock()
	if r.linkDown {
		r.linkDown = false
		r.log.Info("redishub: subscription link to Redis back")
	}
	rp := r.replicas[id]
	if rp == nil || rp.confirmed {
		r.mu.Unlock()
		return
	}
	rp.confirmed = true
	first := false
	select {
	case <-rp.subscribed:
	default:
		first = true
		close(rp.subscribed)
	}
	r.mu.Unlock()
	if first {
		return
	}
	rp.mu.Lock()
	if !rp.ready || rp.gone {
		rp.mu.Unlock()
		return // still opening: its snapshot comes after this confirmation anyway
	}
	rp.ready = false // hold the notifications from now on
	rp.mu.Unlock()
	r.mu.Lock()
	if !r.queued[rp] {
		r.queued[rp] = true
		r.backlog = append(r.backlog, rp)
	}
	r.mu.Unlock()
	select {
	case r.catchUp <- nil:
	default:
	}
}

// catchUpLoop catches replicas up after the link failed, a batch of
// snapshots per round trip.
func (r *Relay) catchUpLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.catchUp:
		}
		for {
			r.mu.Lock()
			batch := r.backlog[:min(len(r.backlog), syncBatch)]
			r.backlog = r.backlog[len(batch):]
			for _, rp := range batch {
				delete(r.queued, rp)
			}
			r.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			r.catchUpBatch(batch) // if Redis fails, the next confirmations bring them back
		}
	}
}

// catchUpBatch reads the snapshots of batch in one pipeline and applies
// them; a replica whose channel was closed meanwhile is closed, one whose
// channel Redis no longer knows (Redis lost its data) is kept, so that its
// listeners get what is published once the channel is opened again.
func (r *Relay) catchUpBatch(batch []*replica) {
	ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
	defer cancel()
	cmds, err := r.pipeline(ctx, func(p redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(batch))
		for i, rp := range batch {
			cmds[i] = snapshotScript.EvalSha(ctx, p, r.keys(rp.id), r.instance)
		}
		return cmds
	})
	for i, rp := range batch {
		var snap *snapshot
		var serr error
		if err == nil {
			snap, serr = parseSnapshot(rp.id, cmds[i])
		}
		rp.mu.Lock()
		switch {
		case err != nil || serr != nil:
			// Redis failed: apply what came meanwhile and wait for the next
			// confirmation.
		case snap == nil:
			r.stats.lost.Add(1)
		case snap.closed:
			rp.ready = true
			r.apply(rp, "x")
		default:
			r.catchUpWith(rp, snap)
		}
		rp.ready = true
		for _, n := range rp.queue {
			r.apply(rp, n)
		}
		rp.queue = nil
		rp.mu.Unlock()
	}
}

// pipeline runs the scripts that build adds in one pipeline, loading the
// scripts first if Redis lost them (after a restart).
func (r *Relay) pipeline(ctx context.Context, build func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		p := r.client.Pipeline()
		cmds := build(p)
		_, err := p.Exec(ctx)
		noScript := false
		for _, c := range cmds {
			if e := c.Err(); e != nil && strings.HasPrefix(e.Error(), "NOSCRIPT") {
				noScript = true
			}
		}
		if !noScript || attempt > 0 {
			if err != nil && !errors.Is(err, redis.Nil) && !isReply(err) {
				return cmds, err
			}
			return cmds, nil
		}
		for _, s := range scripts {
			if err := s.Load(ctx, r.client).Err(); err != nil {
				return cmds, err
			}
		}
	}
}

// isReply reports whether err is an error that Redis answered to one
// command (which the command's own result carries), not a failed link.
func isReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// syncLoop writes the listener counts and closes unneeded replicas every
// Options.SyncInterval until Shutdown.
func (r *Relay) syncLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.Sync(context.Background())
		}
	}
}

// Sync does at once what the Relay does every Options.SyncInterval: it
// writes this instance's changed listener counts to Redis (and each
// again before Options.CountTTL lapses), reads the other instances' counts
// for the listener cap, and closes the replicas that have had no listener
// for Options.ReplicaGrace. Tests call it to await a count.
func (r *Relay) Sync(ctx context.Context) error {
	now := time.Now()
	type item struct {
		rp    *replica
		n     int
		req   time.Time
		close bool
	}
	var items []item
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	for _, rp := range r.replicas {
		select {
		case <-rp.opened:
		default:
			continue
		}
		n, req, ok := r.hub.ListenerCount(rp.id)
		if !ok {
			continue
		}
		it := item{rp: rp, n: n, req: req}
		switch {
		case n > 0 || rp.pending > 0:
			rp.idleSince = time.Time{}
		case rp.idleSince.IsZero():
			rp.idleSince = now
		case now.Sub(rp.idleSince) >= r.opts.ReplicaGrace:
			if r.hub.CloseUnlistened(rp.id) {
				it.close, it.n = true, 0
				r.forget(rp)
				rp.mu.Lock()
				rp.gone = true
				rp.mu.Unlock()
			}
		}
		rp.mu.Lock()
		// A channel near its cap is read every time, for the cap's sake.
		near := rp.cap >= 0 && 2*(n+rp.others) >= rp.cap
		due := it.close || near || n != rp.synced || !req.Equal(rp.lastReq) || now.Sub(rp.syncAt) >= r.opts.CountTTL/3
		rp.mu.Unlock()
		if due {
			items = append(items, it)
		}
	}
	r.mu.Unlock()
	for _, it := range items {
		if it.close {
			r.stats.replicasClosed.Add(1)
			r.unsubscribe(it.rp)
		}
	}
	var errs []error
	for len(items) > 0 {
		batch := items[:min(len(items), syncBatch)]
		items = items[len(batch):]
		ttl := r.opts.CountTTL.Milliseconds()
		cmds, err := r.pipeline(ctx, func(p redis.Pipeliner) []*redis.Cmd {
			cmds := make([]*redis.Cmd, len(batch))
			for i, it := range batch {
				var req int64
				if !it.req.Equal(it.rp.lastReq) && !it.req.IsZero() {
					req = it.req.UnixMilli()
				}
				cmds[i] = syncScript.EvalSha(ctx, p, r.keys(it.rp.id), r.instance, it.n, ttl, req)
			}
			return cmds
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("redishub: sync: %w: %w", ErrRedis, err))
			continue
		}
		for i, it := range batch {
			res, err := cmds[i].Slice()
			it.rp.mu.Lock()
			if err == nil || errors.Is(err, redis.Nil) {
				it.rp.synced, it.rp.lastReq, it.rp.syncAt = it.n, it.req, now
			}
			if err == nil && len(res) == 2 && !it.close {
				cs, _ := res[0].(string)
				if c, err := strconv.Atoi(cs); err == nil {
					it.rp.cap = c
				}
				o, _ := res[1].(int64)
				it.rp.others = int(o)
				r.limit(it.rp)
			}
			it.rp.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// Shutdown ends every listener of this instance as the embedded relay's
// Shutdown does, stops the Relay's goroutines, and removes this instance's
// listener counts from Redis (within ctx). Channels stay open in Redis,
// for the other instances. It returns as [hub.Hub.Shutdown] does.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return r.hub.Shutdown(ctx)
	}
	r.closed = true
	var ids []string
	for id, rp := range r.replicas {
		rp.mu.Lock()
		if rp.synced > 0 {
			ids = append(ids, id)
		}
		rp.mu.Unlock()
	}
	r.mu.Unlock()
	close(r.stop)
	_ = r.ps.Close()
	err := r.hub.Shutdown(ctx)
	r.wg.Wait()
	if len(ids) > 0 {
		p := r.client.Pipeline()
		for _, id := range ids {
			p.HDel(ctx, r.keys(id)[2], r.instance)
		}
		_, _ = p.Exec(ctx)
	}
	return err
}

func (r *Relay) check(ctx context.Context, op, channel string) error {
	if err := relay.ValidateID(channel); err != nil {
		return opError(op, channel, err)
	}
	if err := ctx.Err(); err != nil {
		return opError(op, channel, err)
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return opError(op, channel, relay.ErrClosed)
	}
	return nil
}

// fail wraps the error of a script: "NOTFOUND" as relay.ErrChannelNotFound,
// Redis's OOM as relay.ErrRelayFull, anything else with ErrRedis.
func (r *Relay) fail(op, channel string, err error) error {
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "NOTFOUND"):
		return opError(op, channel, relay.ErrChannelNotFound)
	case strings.HasPrefix(msg, "OOM"):
		r.stats.redisFailed.Add(1)
		return opError(op, channel, fmt.Errorf("%w: %w: %w", relay.ErrRelayFull, ErrRedis, err))
	}
	r.stats.redisFailed.Add(1)
	return opError(op, channel, fmt.Errorf("%w: %w", ErrRedis, err))
}

func opError(op, channel string, err error) error {
	if len(channel) > 64 {
		channel = channel[:64] + "…"
	}
	return fmt.Errorf("redishub: %s %q: %w", op, channel, err)
}
