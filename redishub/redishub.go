package redishub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
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
	instance string    // this Relay's name in the channels' listener counts
	epoch    time.Time // of the replicas' times (mono)
	bufLen   int       // MAXLEN of the streams
	ttl      int64     // message TTL in ms; 0: forever
	maxSize  int
	defCap   int

	ps    *redis.PubSub
	subMu sync.Mutex // orders a channel's Subscribe after an earlier replica's Unsubscribe

	openMu     sync.Mutex // guards the three below: see openCtx
	openCtxv   context.Context
	openCancel context.CancelFunc // of openCtxv; the older ones expire
	openFrom   time.Time

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
		epoch:    time.Now(),
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
	r.openMu.Lock()
	if r.openCancel != nil {
		r.openCancel() // the older ones expire on their own, within subscribeTimeout
	}
	r.openMu.Unlock()
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
