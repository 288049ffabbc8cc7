package redishub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush/relay"
)

// replica is one channel's replica on this instance: the hub's channel, its
// subscription, and the notifications held while it catches up. An instance
// holds one per channel with local listeners, for as long as they listen,
// so it is kept small: its channels are dropped once it is open, its times
// are nanoseconds of the Relay's monotonic clock (see Relay.mono), and its
// notification channel's name is derived when needed.
type replica struct {
	id string

	// opened is closed once the replica is open, or failed (err); then,
	// under Relay.mu, replaced by openedDone. subscribed is closed at the
	// first subscription confirmation; nil once the replica is open. Both
	// are read under Relay.mu, but by the open goroutine itself.
	opened     chan struct{}
	subscribed chan struct{}
	err        error

	mu      sync.Mutex // orders the notifications, the snapshots and the close
	queue   []string   // notifications held while not ready
	cap     int        // the channel's cap; negative: none
	others  int        // listeners of other instances, as last read
	syncAt  int64      // Relay.mono of the count last written; zero: never
	lastReq int64      // the requested time last written, Unix ns; zero: none
	synced  int32      // the count last written; -1: never
	ready   bool       // notifications are applied as they come; else queued
	gone    bool       // closed

	// Under Relay.mu.
	idleSince int64 // Relay.mono when the hub's channel was first seen without listeners; zero: it has some
	pending   int32 // ServeListener calls between admission and the hub
	removed   bool
	confirmed bool
}

// openedDone is the opened channel of every replica that is open (or
// failed): one closed channel for all, so that each replica's own is
// garbage once its opening is over.
var openedDone = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

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
	rp, opened := r.acquire(channel)
	if rp == nil { // after Shutdown
		r.hub.ServeListener(w, req, channel)
		return
	}
	defer r.release(rp)
	select {
	case <-opened:
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
// its opened channel, and counts the caller in it until release; nil after
// Shutdown.
func (r *Relay) acquire(channel string) (*replica, chan struct{}) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, nil
	}
	rp := r.replicas[channel]
	if rp == nil {
		// A copy of the ID: channel may be a slice of the request's line,
		// which the replica would keep alive.
		rp = &replica{id: strings.Clone(channel), opened: make(chan struct{}),
			subscribed: make(chan struct{}), synced: -1, cap: r.defCap}
		r.replicas[rp.id] = rp
		rp.pending++
		r.wg.Add(1)
		opened := rp.opened
		r.mu.Unlock()
		go r.open(rp)
		return rp, opened
	}
	rp.pending++
	opened := rp.opened
	r.mu.Unlock()
	return rp, opened
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
	ctx := r.openCtx()
	r.subMu.Lock()
	err := r.ps.Subscribe(ctx, r.notifyName(rp.id))
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
	r.mu.Lock()
	rp.opened, rp.subscribed = openedDone, nil
	r.mu.Unlock()
}

// openCtx returns the context of a replica's opening: a deadline
// subscribeTimeout to subscribeTimeout+1s away, shared by the openings that
// start within the same second. A context of its own for each would keep
// ~160 bytes per replica reachable until its deadline, cancelled or not
// (its stopped timer stays in the runtime's timer heap while other timers,
// such as the listeners' heartbeats, are live): bursts of new listeners
// would pay for it.
func (r *Relay) openCtx() context.Context {
	now := time.Now()
	r.openMu.Lock()
	defer r.openMu.Unlock()
	if r.openCtxv == nil || now.Sub(r.openFrom) >= time.Second {
		r.openCtxv, r.openCancel = context.WithDeadline(context.Background(), now.Add(subscribeTimeout+time.Second))
		r.openFrom = now
	}
	return r.openCtxv
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
		_ = r.ps.Unsubscribe(ctx, r.notifyName(rp.id))
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
	if rp.subscribed != nil {
		select {
		case <-rp.subscribed:
		default:
			first = true
			close(rp.subscribed)
		}
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
