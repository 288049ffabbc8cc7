package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

var (
	_ relay.Relay              = (*Hub)(nil)
	_ relay.ListenerServer     = (*Hub)(nil)
	_ relay.MaxListenersSetter = (*Hub)(nil)
)

// Options configures a [Hub]. The zero value gives Nchan's defaults.
type Options struct {
	// BufferLength is the number of messages kept per channel for listeners
	// that connect or poll later. Zero means 10 (Nchan's default); a
	// negative value keeps none, so a message reaches only the listeners
	// waiting when it is published.
	BufferLength int

	// MessageTTL is how long a message stays buffered; an expired message
	// is never delivered. Zero means one hour; negative means forever.
	MessageTTL time.Duration

	// MaxListeners caps the concurrent listeners of one channel; one more
	// is answered 403. Zero means 10; negative means no cap.
	// [Hub.SetMaxListeners] changes it for one open channel.
	MaxListeners int

	// MaxBufferedBytes caps the memory of all buffered messages, of all
	// channels together: when a message takes the total above it, the
	// oldest buffered messages, whatever their channel, are dropped until
	// it fits, and listeners that had not had them get the gap signal (see
	// ServeListener) as for any dropped message. Each message counts its
	// bytes as held (the body once, inside its EventSource event, or twice
	// for a body with line breaks) and 256 bytes more. It bounds what
	// publishers can make the hub hold, whatever the number of channels.
	// Zero means 64 MiB; negative means no cap.
	MaxBufferedBytes int64

	// MaxMessageSize is the largest body, in bytes, that Publish accepts.
	// Zero means 1 MiB (nginx's default client_max_body_size); negative
	// means no limit.
	MaxMessageSize int

	// LongPollTimeout is how long a long-poll waits for a message before
	// it is answered 408. Zero means 30 seconds; negative means no limit.
	LongPollTimeout time.Duration

	// Heartbeat is the silence after which an EventSource stream gets a
	// comment line and a WebSocket a ping, so that proxies and browsers
	// keep it open. Zero means 15 seconds; negative means none.
	Heartbeat time.Duration

	// WriteTimeout bounds each write to a listener, and the wait for a
	// WebSocket listener's answer to a ping; a listener that does not take
	// a write or answer within it is disconnected. The deadline covers one
	// write and is cleared once it is done, and a listener waits without
	// one, so neither this bound nor an http.Server WriteTimeout cuts an
	// idle stream or a long wait, over HTTP/1.1, TLS or HTTP/2 (where a
	// write deadline that passes resets the stream even with no write
	// under way). Zero means 10 seconds; negative means no bound.
	WriteTimeout time.Duration

	// OriginPatterns lists the other origins whose pages may open a
	// WebSocket listener, as path.Match patterns matched without regard
	// to case against the Origin header's host, or against its
	// "scheme://host" when the pattern contains "://": for example
	// "app.example.com", "*.example.com" or "https://app.example.com". A
	// WebSocket handshake whose Origin names another host than the
	// request's Host and matches no pattern is answered 403; a malformed
	// pattern matches nothing. A handshake without Origin (browsers always
	// send one) is accepted. Nil means only same-host origins. It does not
	// apply to long-poll and EventSource, whose answers browsers let other
	// origins read only with CORS headers, which the hub does not send.
	OriginPatterns []string

	// Logger records dropped and refused listeners: at debug level when a
	// write fails, a write times out ("hub: slow listener disconnected")
	// or a WebSocket handshake is refused, at error level when the
	// ResponseWriter cannot flush or hijack. Nil means slog.Default().
	Logger *slog.Logger
}

// Hub is the embedded relay: it keeps channels and their message buffers in
// memory and serves their listeners over long-poll, EventSource and
// WebSocket. It implements [relay.Relay] and [relay.ListenerServer].
//
// Create one with [New]; a Hub is safe for concurrent use and must not be
// copied. Stop it with [Hub.Shutdown].
type Hub struct {
	opts Options // defaults applied
	log  *slog.Logger

	mu       sync.RWMutex
	channels map[string]*chanState
	closed   bool

	serving sync.WaitGroup // ServeListener calls and hijacked streams in flight

	budget budget // every buffered message, for Options.MaxBufferedBytes
	stats  counters

	// Set by tests only.
	noHijack      bool // serve EventSource on the ResponseWriter, as before hijacking
	dispatchChunk int  // the most streams one dispatching goroutine writes to
}

// New returns a Hub configured by opts, with defaults for its zero fields.
// It starts no goroutine.
func New(opts Options) *Hub {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if opts.BufferLength == 0 {
		opts.BufferLength = 10
	}
	if opts.MaxListeners == 0 {
		opts.MaxListeners = 10
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = 1 << 20
	}
	if opts.MaxBufferedBytes == 0 {
		opts.MaxBufferedBytes = 64 << 20
	}
	def(&opts.MessageTTL, time.Hour)
	def(&opts.LongPollTimeout, 30*time.Second)
	def(&opts.Heartbeat, 15*time.Second)
	def(&opts.WriteTimeout, 10*time.Second)
	opts.OriginPatterns = slices.Clone(opts.OriginPatterns)
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Hub{opts: opts, log: log, channels: make(map[string]*chanState), budget: budget{max: opts.MaxBufferedBytes}, dispatchChunk: dispatchChunk}
}

// Open creates channel, or keeps it if it is open, and returns a cursor: the
// ID of the newest message published to it, or [relay.NoCursor] if none was.
// A listener that resumes from the cursor receives every message published
// after Open returned.
func (h *Hub) Open(ctx context.Context, channel string) (string, error) {
	if err := check(ctx, "open", channel); err != nil {
		return "", err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return "", opError("open", channel, relay.ErrClosed)
	}
	c := h.channels[channel]
	if c == nil {
		c = &chanState{maxListeners: h.opts.MaxListeners, budget: &h.budget}
		h.channels[channel] = c
		h.stats.channels.Add(1)
	}
	h.mu.Unlock()

	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cursor(), nil
}

// Publish appends m to the channel's buffer and wakes its listeners. It
// returns an error wrapping [relay.ErrChannelNotFound] if the channel is not
// open, [relay.ErrMessageTooLarge] if the body exceeds
// Options.MaxMessageSize, [relay.ErrClosed] after Shutdown, an error
// wrapping [ErrReservedEvent] if m.Event is "gap" (the name of the hub's
// gap signal, see ServeListener), and an error if m.Event contains CR or
// LF; nothing is published then.
//
// Publish never waits for listeners: it holds the channel's lock only to
// append. It hands the message to the channel's idle hijacked EventSource
// streams (see ServeListener); to a few of them it writes it itself, as
// far as each socket takes it at once, which costs a system call each but
// no goroutine; more get a goroutine of their own. A stream over TLS, which
// cannot be written without the risk of waiting, is always handed to a
// goroutine of its own for the write.
func (h *Hub) Publish(ctx context.Context, channel string, m relay.Message) (relay.Receipt, error) {
	if err := check(ctx, "publish", channel); err != nil {
		return relay.Receipt{}, err
	}
	if strings.ContainsAny(m.Event, "\r\n") {
		return relay.Receipt{}, opError("publish", channel, errors.New("event name contains CR or LF"))
	}
	if m.Event == gapEvent {
		return relay.Receipt{}, opError("publish", channel, fmt.Errorf("%w: %q", ErrReservedEvent, m.Event))
	}
	if limit := h.opts.MaxMessageSize; limit >= 0 && len(m.Body) > limit {
		return relay.Receipt{}, opError("publish", channel,
			fmt.Errorf("%w: %d bytes, limit %d", relay.ErrMessageTooLarge, len(m.Body), limit))
	}
	c, err := h.lookup("publish", channel)
	if err != nil {
		return relay.Receipt{}, err
	}
	msg := newMessage(m) // the costly part, outside any lock
	now := time.Now()
	if h.opts.MessageTTL > 0 {
		msg.expires = now.Add(h.opts.MessageTTL)
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return relay.Receipt{}, opError("publish", channel, relay.ErrChannelNotFound)
	}
	c.stamp(msg, now)
	return h.appendLocked(c, msg, now), nil
}

// appendLocked buffers msg, stamped, in c, wakes c's listeners and hands
// msg to its idle streams. The caller holds c.mu for writing, which
// appendLocked releases.
func (h *Hub) appendLocked(c *chanState, msg *message, now time.Time) relay.Receipt {
	if h.opts.BufferLength > 0 {
		c.msgs = append(c.msgs, msg)
		h.budget.add(c, msg)
	} else {
		c.dropped = msg.pos // never buffered
	}
	c.prune(now, h.opts.BufferLength)
	if w := c.wake; w != nil {
		c.wake = nil // the next waiter makes the next one
		w.msg = msg
		close(w.c)
	}
	parked := c.takeParked(msg.pos)
	receipt := relay.Receipt{ID: msg.id, Listeners: c.listeners, Queued: len(c.msgs)}
	c.mu.Unlock()
	h.budget.evict()
	h.stats.published.Add(1)
	switch {
	case len(parked) > inlineDispatch:
		go dispatch(parked, msg, h.dispatchChunk)
	case len(parked) > 0:
		deliverAll(parked, msg) // cheaper than a goroutine; never waits
	}
	return receipt
}

// Info reports on an open channel: its unexpired buffered messages, its
// listeners, the ID of its newest message ([relay.NoCursor] if none) and the
// time since a listener last connected (negative if none did). It returns an
// error wrapping [relay.ErrChannelNotFound] if the channel is not open.
func (h *Hub) Info(ctx context.Context, channel string) (relay.Info, error) {
	if err := check(ctx, "info", channel); err != nil {
		return relay.Info{}, err
	}
	c, err := h.lookup("info", channel)
	if err != nil {
		return relay.Info{}, err
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prune(now, h.opts.BufferLength)
	since := time.Duration(-1)
	if !c.requested.IsZero() {
		since = now.Sub(c.requested)
	}
	return relay.Info{
		Messages:      len(c.msgs),
		Listeners:     c.listeners,
		LastMessageID: c.cursor(),
		SinceRequest:  since,
	}, nil
}

// Close deletes channel and its buffer and ends its listeners: a waiting
// long-poll is answered 410, an EventSource stream gets ":410: 410 Gone" and
// ends, a WebSocket is closed with status 1001 and reason "410 Gone". It
// returns an error wrapping [relay.ErrChannelNotFound] if the channel is not
// open.
func (h *Hub) Close(ctx context.Context, channel string) error {
	if err := check(ctx, "close", channel); err != nil {
		return err
	}
	h.mu.Lock()
	c, closed := h.channels[channel], h.closed
	delete(h.channels, channel)
	h.mu.Unlock()
	switch {
	case closed:
		return opError("close", channel, relay.ErrClosed)
	case c == nil:
		return opError("close", channel, relay.ErrChannelNotFound)
	}
	h.stats.channels.Add(-1)
	c.close()
	return nil
}

// SetMaxListeners sets the cap of concurrent listeners of the open channel:
// n listeners at most, none when n is negative, Options.MaxListeners when n
// is zero. Listeners already in are never ended; the cap applies to the
// next ones. The setting lasts while the channel is open: a channel closed
// and opened again starts with Options.MaxListeners. It returns an error
// wrapping [relay.ErrChannelNotFound] if the channel is not open.
//
// It is meant for a channel that many listeners share, such as
// sessionpush's broadcast channel (Config.BroadcastChannel).
func (h *Hub) SetMaxListeners(channel string, n int) error {
	if err := relay.ValidateID(channel); err != nil {
		return opError("set max listeners", channel, err)
	}
	c, err := h.lookup("set max listeners", channel)
	if err != nil {
		return err
	}
	if n == 0 {
		n = h.opts.MaxListeners
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return opError("set max listeners", channel, relay.ErrChannelNotFound)
	}
	c.maxListeners = n
	return nil
}

// Shutdown closes every channel as [Hub.Close] does and refuses new
// listeners (503) and every later call ([relay.ErrClosed]). It returns nil
// once every ServeListener call has returned and every EventSource stream
// it handed to a goroutine of its own has ended, or ctx.Err() if ctx ends
// first; listeners still writing then end within Options.WriteTimeout, and
// a WebSocket's close handshake within coder/websocket's bounds (5 seconds
// to send the close, 5 to await the client's answer).
func (h *Hub) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	channels := h.channels
	h.channels, h.closed = nil, true
	h.stats.channels.Add(-int64(len(channels)))
	h.mu.Unlock()
	for _, c := range channels {
		c.close()
	}
	done := make(chan struct{})
	go func() {
		h.serving.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ServeListener serves one listener of channel: WebSocket when the
// request asks to upgrade to it, else EventSource when its Accept names
// text/event-stream, else long-poll. The caller has already decided that
// the request may listen to channel; for WebSocket it decides on the
// upgrade request.
//
// It answers 400 to an invalid channel ID or resume position, 403 if the
// channel is not open or has Options.MaxListeners listeners, 405 to methods
// other than GET and 503 after Shutdown; WebSocket handshakes get these
// answers too, before the upgrade, and 403 for an Origin that
// Options.OriginPatterns does not allow.
//
// An EventSource listener over HTTP/1.x takes the connection over
// (http.Hijacker): ServeListener sends the status through w, so that the
// wrappers of w (an access log) see it, with the headers then in
// w.Header() and those it sets itself, then hijacks, and returns while the
// stream goes on. Such a response has no Content-Length and no chunked
// encoding: it carries "Connection: close" and ends when the connection
// closes. While the stream is idle, only a goroutine blocked in a small
// Read serves it, to notice at once a client that goes away; Publish hands
// the message to the channel's idle streams and it is written straight to
// their sockets, as far as each takes it at once; a stream that has more to
// take, or that is over TLS, gets a goroutine until it is caught up, each of
// whose writes is bounded by Options.WriteTimeout. This keeps an idle listener at about
// 5 KiB of process memory, against about 27 KiB for a net/http handler
// goroutine with its buffers. Over HTTP/2, or when w cannot hijack, the
// stream is served on the handler goroutine and ServeListener returns
// when it ends. Either way [Hub.Shutdown] ends the stream and waits for it;
// http.Server.Shutdown does not wait for a hijacked one (the connection is
// no longer the server's), nor does the request's context follow it.
//
// A listener without a position gets the messages published after it came
// (see the package documentation). A listener that resumes after a
// position P and whose next messages were dropped before it got them
// (evicted by Options.BufferLength or Options.MaxBufferedBytes, expired by
// Options.MessageTTL, or never buffered), either when it resumes or because
// it fell that far behind, is told so before the first message after the
// gap: EventSource gets an event named "gap" whose data is P
// ("<sec>:<tag>", the last message it had) and that has no "id:" line, so
// it does not move the browser's Last-Event-ID; long-poll gets the answer
// carrying the first message after the gap with the header "X-Gap: P";
// WebSocket with the ws+meta.sessionpush subprotocol gets the frame of that
// message with a "gap: P" line after its other header lines. A WebSocket
// with ws+meta.nchan gets no signal, so that its frames keep Nchan's exact
// shape, nor does a plain WebSocket, whose frames carry no metadata.
func (h *Hub) ServeListener(w http.ResponseWriter, r *http.Request, channel string) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Accel-Buffering", "no")
	webSocket := isWebSocket(r)
	eventStream := !webSocket && acceptsEventStream(r)
	longPoll := !webSocket && !eventStream
	tr, enc := transportLongPoll, encLongPoll
	switch {
	case webSocket:
		tr, enc = transportWebSocket, encWebSocket // or a meta encoding, as the subprotocol says (see webSocket)
	case eventStream:
		tr, enc = transportEventSource, encEventSource
	}
	if longPoll {
		hdr.Add("Vary", "If-None-Match, If-Modified-Since")
	}
	if !h.enter() {
		h.refuse(w, http.StatusServiceUnavailable, "")
		return
	}
	handedOff := false // to a hijacked stream, which calls serving.Done
	defer func() {
		if !handedOff {
			h.serving.Done()
		}
	}()

	if r.Method != http.MethodGet {
		hdr.Set("Allow", http.MethodGet)
		h.refuse(w, http.StatusMethodNotAllowed, "")
		return
	}
	if relay.ValidateID(channel) != nil {
		h.refuse(w, http.StatusBadRequest, "invalid channel id")
		return
	}
	pos, given, reason := position(r, longPoll)
	if reason != "" {
		h.refuse(w, http.StatusBadRequest, reason)
		return
	}
	c := h.join(channel, tr, &pos, given)
	if c == nil {
		h.refuse(w, http.StatusForbidden, "")
		return
	}
	defer func() {
		if !handedOff {
			h.leave(c, tr)
		}
	}()

	l := &listener{hub: h, ch: c, w: w, rc: http.NewResponseController(w), pos: pos, channel: channel, transport: tr, enc: enc}
	var err error
	switch {
	case webSocket:
		err = l.webSocket(r)
	case eventStream:
		if r.ProtoMajor == 1 && !h.noHijack {
			handedOff, err = l.hijack()
			if handedOff || err != nil {
				break
			}
		}
		err = l.eventSource(r.Context())
	default:
		err = l.longPoll(r.Context())
	}
	if err != nil {
		h.dropped(r.Context(), l, err)
	}
}

// dropped counts and logs a listener ended by err.
func (h *Hub) dropped(ctx context.Context, l *listener, err error) {
	switch {
	case errors.Is(err, http.ErrNotSupported):
		// a ResponseWriter wrapper that cannot flush or hijack
		h.stats.unsupported.Add(1)
		h.log.Log(ctx, slog.LevelError, "hub: listener dropped", "channel", l.channel, "err", err)
	case l.wrote && l.timedOut(err):
		h.stats.slow.Add(1)
		h.log.Log(ctx, slog.LevelDebug, "hub: slow listener disconnected",
			"channel", l.channel, "transport", l.transport.String(), "err", err)
	default:
		if l.wrote {
			h.stats.writeFailed.Add(1)
		}
		h.log.Log(ctx, slog.LevelDebug, "hub: listener dropped",
			"channel", l.channel, "transport", l.transport.String(), "err", err)
	}
}

// isTimeout reports whether err is a write or a ping that did not complete
// within its deadline.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// refuse answers a listener that is not let in, and counts it.
func (h *Hub) refuse(w http.ResponseWriter, code int, reason string) {
	h.stats.refusedAdd(code)
	reply(w, code, reason)
}

// enter counts a ServeListener call for Shutdown, or reports false after
// Shutdown. The count rises under the lock that Shutdown takes to close, so
// no Add races with its Wait.
func (h *Hub) enter() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return false
	}
	h.serving.Add(1)
	return true
}

// join registers a listener on the named channel, or returns nil if the
// channel is not open or is full. A listener that gave no position gets
// the newest message's as *pos, the moment it is counted: it gets the
// messages published after that, not the buffer.
func (h *Hub) join(name string, tr transport, pos *relay.MessageID, given bool) *chanState {
	h.mu.RLock()
	c := h.channels[name]
	h.mu.RUnlock()
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.maxListeners >= 0 && c.listeners >= c.maxListeners {
		return nil
	}
	c.listeners++
	c.requested = time.Now()
	if !given {
		*pos = c.last
	}
	h.stats.listeners[tr].Add(1)
	return c
}

// leave unregisters a listener that join registered.
func (h *Hub) leave(c *chanState, tr transport) {
	c.leave()
	h.stats.listeners[tr].Add(-1)
}

func (h *Hub) lookup(op, name string) (*chanState, error) {
	h.mu.RLock()
	c, closed := h.channels[name], h.closed
	h.mu.RUnlock()
	switch {
	case closed:
		return nil, opError(op, name, relay.ErrClosed)
	case c == nil:
		return nil, opError(op, name, relay.ErrChannelNotFound)
	}
	return c, nil
}

// chanState is one open channel: its buffer, oldest first, and the wake that
// fires at its next message or its end, made by the first listener that waits
// for it (nil while none does: idle hijacked streams are parked instead, so
// a channel whose listeners all idle that way, and a publish that nobody
// waits for, allocate none).
type chanState struct {
	mu           sync.RWMutex
	msgs         []*message
	last         relay.MessageID // newest ID issued; zero before the first
	dropped      relay.MessageID // newest ID dropped from msgs or never in it; zero: none
	wake         *wake
	closed       bool
	listeners    int
	parked       []*hstream      // idle hijacked streams, caught up; see hstream.slot
	parkedAhead  relay.MessageID // the newest position of a stream parked ahead of last (see takeParked); zero: none
	maxListeners int             // the cap of listeners; negative: none
	requested    time.Time       // when a listener last connected; zero: never
	budget       *budget         // the hub's, which counts msgs
	modSec       int64           // the second of modStr, reused within a second
	modStr       string
}

// wake is closed when the next message is published (msg is then set) or
// when the channel ends (msg stays nil).
type wake struct {
	c   chan struct{}
	msg *message
}

func newWake() *wake { return &wake{c: make(chan struct{})} }

// cursor returns the ID of the newest message ever published, or
// relay.NoCursor. The caller holds c.mu.
func (c *chanState) cursor() string {
	if c.last == (relay.MessageID{}) {
		return relay.NoCursor
	}
	return c.last.String()
}

// stamp gives m the channel's next ID, strictly greater than the last even if
// the clock stepped back, and everything derived from it. The caller holds
// c.mu for writing.
func (c *chanState) stamp(m *message, now time.Time) {
	id := relay.MessageID{Time: max(now.Unix(), c.last.Time)}
	if id.Time == c.last.Time {
		id.Tag = c.last.Tag + 1
	}
	c.label(m, id)
}

// label gives m the ID id, which follows c.last, and everything derived
// from it. The caller holds c.mu for writing.
func (c *chanState) label(m *message, id relay.MessageID) {
	c.last = id
	m.setID(id)

	if c.modStr == "" || c.modSec != id.Time {
		c.modSec, c.modStr = id.Time, time.Unix(id.Time, 0).UTC().Format(http.TimeFormat)
	}
	m.modified = c.modStr
}

// prune drops the messages beyond the buffer length and the expired ones.
// The caller holds c.mu for writing.
func (c *chanState) prune(now time.Time, keep int) {
	drop := max(len(c.msgs)-max(keep, 0), 0)
	for drop < len(c.msgs) && !c.msgs[drop].live(now) {
		drop++
	}
	if drop > 0 {
		c.dropped = c.msgs[drop-1].pos
		for _, m := range c.msgs[:drop] {
			c.budget.remove(m)
		}
		n := copy(c.msgs, c.msgs[drop:])
		clear(c.msgs[n:])
		c.msgs = c.msgs[:n]
	}
}

// next returns the oldest unexpired message after pos or, if there is none,
// the wake to wait on. closed reports that the channel has ended. gap
// reports that messages after a non-zero pos were dropped before the one
// returned, or before the one the wake will bring: dropped from the buffer,
// or expired there.
func (c *chanState) next(pos relay.MessageID) (m *message, w *wake, gap, closed bool) {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return nil, nil, false, true
	}
	m, gap = c.after(pos)
	w = c.wake
	c.mu.RUnlock()
	switch {
	case m != nil:
		return m, nil, gap, false
	case w != nil:
		return nil, w, gap, false
	}
	// No wake yet: make it under the write lock, after looking again, as a
	// message or the end may have come meanwhile.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nil, false, true
	}
	if m, gap = c.after(pos); m != nil {
		return m, nil, gap, false
	}
	if c.wake == nil {
		c.wake = newWake()
	}
	return nil, c.wake, gap, false
}

// after returns the oldest unexpired message after pos, or nil, and whether
// messages after a non-zero pos were dropped before it (see next). The
// caller holds c.mu.
func (c *chanState) after(pos relay.MessageID) (m *message, gap bool) {
	gap = pos != (relay.MessageID{}) && c.dropped.Compare(pos) > 0
	i, found := slices.BinarySearchFunc(c.msgs, pos, func(m *message, id relay.MessageID) int {
		return m.pos.Compare(id)
	})
	if found {
		i++
	}
	for now := time.Now(); i < len(c.msgs); i++ {
		if c.msgs[i].live(now) {
			return c.msgs[i], gap
		}
		gap = pos != (relay.MessageID{}) // an expired one, not yet pruned
	}
	return nil, gap
}

// sent returns the message that fired w if it follows pos and is live: the
// very next message after the one a listener waited from, even if the buffer
// has already dropped it.
func (w *wake) sent(pos relay.MessageID) *message {
	if m := w.msg; m != nil && m.pos.Compare(pos) > 0 && m.live(time.Now()) {
		return m
	}
	return nil
}

func (c *chanState) leave() {
	c.mu.Lock()
	c.listeners--
	c.mu.Unlock()
}

// close ends the channel and wakes its listeners.
func (c *chanState) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, m := range c.msgs {
		c.budget.remove(m)
	}
	c.msgs = nil
	if c.wake != nil {
		close(c.wake.c)
		c.wake = nil
	}
	for _, s := range c.parked {
		go s.run(nil) // finds the channel closed, and ends the stream
	}
	c.parked = nil
}

// message is one published message with everything its listeners need,
// computed once, at publish; a ws+meta frame is built for each write (see
// encoding.encode).
type message struct {
	pos         relay.MessageID
	id          string // pos as "<unix-seconds>:<tag>"
	etag        string // the tag, a suffix of id
	modified    string // Last-Modified: the message second
	contentType string
	length      string // Content-Length
	body        []byte
	frame       []byte    // the EventSource event: event, id and data lines, blank line
	expires     time.Time // zero: never
	eventLine   string    // "event: <name>\n", or empty
	size        int64     // what it holds, for the hub's budget

	// Its place in the hub's budget list, guarded by budget.mu; ch is set
	// once when it is buffered.
	prev, next *message
	ch         *chanState
	linked     bool
}

func (m *message) live(now time.Time) bool {
	return m.expires.IsZero() || now.Before(m.expires)
}

// deadline bounds the next write to the listener by Options.WriteTimeout, or
// clears the connection's deadline when there is no bound. A ResponseWriter
// without deadlines is written to unbounded. The write's caller clears the
// deadline once the write is done (see undeadline), so that it covers that
// write and nothing else: over HTTP/2 a write deadline that passes resets
// the stream whether or not a write is under way.
func (l *listener) deadline() {
	var t time.Time
	if d := l.hub.opts.WriteTimeout; d > 0 {
		t = time.Now().Add(d)
	}
	l.due = t
	_ = l.rc.SetWriteDeadline(t)
}

// undeadline clears the write deadline after a write, or before a wait, so
// that neither Options.WriteTimeout nor an http.Server WriteTimeout cuts a
// listener that is only waiting.
func (l *listener) undeadline() {
	l.due = time.Time{}
	_ = l.rc.SetWriteDeadline(time.Time{})
}

// timedOut reports whether err, the error of a write bounded by deadline,
// is that write's deadline passing: a timeout error, or any error once the
// deadline has passed (an HTTP/2 stream reset by its deadline fails the
// write with an error that does not say so).
func (l *listener) timedOut(err error) bool {
	return isTimeout(err) || !l.due.IsZero() && !time.Now().Before(l.due)
}

// timer returns a timer firing after d, or a nil channel and a no-op stop
// when d is not positive.
func timer(d time.Duration) (*time.Timer, <-chan time.Time) {
	if d <= 0 {
		return nil, nil
	}
	t := time.NewTimer(d)
	return t, t.C
}

// reply answers with code and a short plain-text reason, or an empty body.
func reply(w http.ResponseWriter, code int, reason string) {
	if reason == "" {
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(code)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, reason+"\n")
}

func acceptsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if strings.Contains(v, "text/event-stream") {
			return true
		}
	}
	return false
}

// position returns where a listener resumes: after the ID in the
// Last-Event-ID header, else in the last_event_id query parameter, else (for
// long-poll) after the message named by If-Modified-Since and If-None-Match.
// given is false when the request names none: an empty value counts as
// absent, as does If-None-Match alone. reason is non-empty when the request
// names a position that does not parse.
func position(r *http.Request, longPoll bool) (pos relay.MessageID, given bool, reason string) {
	if s := r.Header.Get("Last-Event-ID"); s != "" {
		id, err := relay.ParseMessageID(s)
		if err != nil {
			return pos, false, "invalid Last-Event-ID"
		}
		return id, true, ""
	}
	if s := r.URL.Query().Get("last_event_id"); s != "" {
		id, err := relay.ParseMessageID(s)
		if err != nil {
			return pos, false, "invalid last_event_id"
		}
		return id, true, ""
	}
	ims, inm := r.Header.Get("If-Modified-Since"), r.Header.Get("If-None-Match")
	if !longPoll || ims == "" {
		return pos, false, ""
	}
	if inm == "" {
		return pos, false, "If-Modified-Since without If-None-Match"
	}
	t, err := http.ParseTime(ims)
	if err != nil || t.Unix() < 0 {
		return pos, false, "invalid If-Modified-Since"
	}
	// The pair names the message "<second>:<tag>": one parser decides what a
	// message ID is, wherever it comes from.
	id, err := relay.ParseMessageID(strconv.FormatInt(t.Unix(), 10) + ":" + inm)
	if err != nil {
		return pos, false, "invalid If-None-Match"
	}
	return id, true, ""
}

func check(ctx context.Context, op, channel string) error {
	if err := relay.ValidateID(channel); err != nil {
		return opError(op, channel, err)
	}
	if err := ctx.Err(); err != nil {
		return opError(op, channel, err)
	}
	return nil
}

func opError(op, channel string, err error) error {
	if len(channel) > 64 {
		channel = channel[:64] + "…"
	}
	return fmt.Errorf("hub: %s %q: %w", op, channel, err)
}
