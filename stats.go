package sessionpush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/sessionpush/sessionpush/relay"
)

// Stats is a snapshot of the counters and gauges of a [Manager], as
// [Manager.Stats] returns it. Counters count from New and only grow; they
// count what this Manager did, so with several application instances each
// has its own. Package metrics writes a Stats in the Prometheus text format.
type Stats struct {
	// ChannelsOpened counts the channels that SubscribeHandler opened: new
	// channels, recorded in the Store, including those that replace a
	// channel the relay lost. Calls of SubscribeHandler that find their
	// channel open do not count.
	ChannelsOpened uint64

	// ChannelsClosed counts the channels that this Manager removed from
	// the Store, by cause.
	ChannelsClosed ClosedChannels

	// OpenChannels is the number of open channels that the Store holds,
	// when the Store tells it without I/O (it implements [LenStore], as
	// MemoryStore does); -1 when it does not: see [Manager.CountChannels]
	// for Stores that count at a cost.
	OpenChannels int

	// Pushes counts the messages that the relay accepted: one per channel
	// published to by Push, PushJSON, Channel.Push, Channel.PushJSON,
	// PushUser and Broadcast (one for the broadcast channel of
	// Config.BroadcastChannel, else one per open channel).
	Pushes uint64

	// PushFailures counts the pushes that published nothing, by reason.
	// A PushUser or Broadcast counts one failure per channel that failed,
	// or one in all when it failed before publishing anything (a message
	// that does not encode or is too large, a store failure).
	PushFailures PushFailures

	// RelayErrors counts the relay requests (Open, Publish, Info, Close)
	// that failed, whatever made them, except the answers "no such
	// channel" ([ErrChannelNotFound]), which are part of the protocol. A
	// request ended by its context's end counts.
	RelayErrors uint64

	// Refused counts the requests that the kit's handlers refused, by
	// handler and reason.
	Refused HandlerRefusals

	// Relay holds the relay's own stats when the relay implements
	// [relay.StatsReporter] (the embedded relay and the Nchan client may);
	// nil otherwise.
	Relay []relay.Stat
}

// ClosedChannels counts closed channels by cause. Only the call that
// removed a channel from the Store counts it, so with a shared store of
// several instances each channel counts once in all.
type ClosedChannels struct {
	// Logout counts channels closed by [Manager.SignOut], or by the
	// Middleware when the session's user signed out.
	Logout uint64
	// Replaced counts channels closed by the Middleware because another
	// user signed in on the same session; that user gets a new channel.
	Replaced uint64
	// Closed counts channels that the application closed with
	// [Manager.CloseChannel].
	Closed uint64
	// Expired counts channels closed by [Manager.ExpireIdle] (and so by
	// [Manager.Run]) for idleness.
	Expired uint64
	// Lost counts channels that the relay reported gone (restarted,
	// deleted by someone else) and that the kit then dropped from the
	// Store, on a push, an Exists or a SubscribeHandler call; the next
	// SubscribeHandler call of the session opens a channel again.
	Lost uint64
}

// PushFailures counts failed pushes by reason.
type PushFailures struct {
	// InvalidID counts pushes to a string that is not a channel ID of the
	// kit ([ErrInvalidChannel]).
	InvalidID uint64
	// TooLarge counts messages larger than Config.MaxMessageSize
	// ([ErrMessageTooLarge]), or that the relay refused as too large.
	TooLarge uint64
	// Encode counts values that encoding/json could not encode (PushJSON,
	// PushUser, Broadcast).
	Encode uint64
	// NotFound counts pushes to a channel that is not open
	// ([ErrChannelNotFound]): unknown to the Store, or reported gone by the
	// relay. A Broadcast on a broadcast channel that the relay does not
	// have counts here, although it returns no error.
	NotFound uint64
	// Store counts pushes that failed because the Store did.
	Store uint64
	// Relay counts pushes that the relay failed for another reason; each
	// also counts in Stats.RelayErrors.
	Relay uint64
}

// HandlerRefusals counts the refused requests of each of the kit's
// handlers.
type HandlerRefusals struct {
	// Subscribe is for SubscribeHandler (/subscribe).
	Subscribe Refusals
	// Listen is for ListenHandler (the embedded relay's listeners).
	Listen Refusals
	// Authorize is for AuthorizeHandler (Nchan's nchan_authorize_request).
	Authorize Refusals
}

// Refusals counts the refusals of one handler by reason. A reason that a
// handler never gives stays zero.
type Refusals struct {
	// Method counts requests with a method that the handler does not
	// serve (405; SubscribeHandler).
	Method uint64
	// CrossOrigin counts POSTs that a browser sent from another origin
	// (403; SubscribeHandler).
	CrossOrigin uint64
	// NotSignedIn counts requests without a signed-in session (401 from
	// SubscribeHandler, 403 from the others).
	NotSignedIn uint64
	// NotOwner counts requests for a channel that the session does not
	// own or that is not open (403): typical of a listener that reconnects
	// after a logout or an expiry, or of someone trying IDs.
	NotOwner uint64
	// InvalidID counts channel IDs that are not the kit's (400 from
	// ListenHandler, 403 from AuthorizeHandler).
	InvalidID uint64
	// NoEndpoint counts listener requests to ListenHandler on a relay
	// that serves its listeners itself, such as Nchan (404).
	NoEndpoint uint64
	// RelayRefused counts listener requests that passed the kit's checks
	// and that the relay then refused with 403 (ListenHandler): a
	// channel with MaxListeners listeners already, a channel the relay
	// does not have, or a WebSocket Origin it does not allow.
	RelayRefused uint64
	// Error counts requests that failed because the session store, the
	// Store or the relay failed (5xx from SubscribeHandler; 403 from the
	// others, which never tell a listener more).
	Error uint64
}

// LenStore is an optional interface of a [Store] that can tell how many
// channels it holds cheaply and without I/O; [Manager.Stats] reports it as
// OpenChannels. [MemoryStore] implements it.
type LenStore interface {
	// Len returns the number of channels recorded.
	Len() int
}

var _ LenStore = (*MemoryStore)(nil)

// ChannelCounter is an optional interface of a [Store] that can count its
// channels at some cost, such as one round trip to its server;
// [Manager.CountChannels] uses it, and so package metrics on every scrape.
type ChannelCounter interface {
	// CountChannels returns the number of channels recorded.
	CountChannels(ctx context.Context) (int, error)
}

// CountChannels returns the number of open channels that the Store holds:
// its Len when it implements [LenStore], else its CountChannels when it
// implements [ChannelCounter] (which may cost a round trip to a server),
// else an error wrapping [errors.ErrUnsupported].
func (m *Manager) CountChannels(ctx context.Context) (int, error) {
	switch s := m.store.(type) {
	case LenStore:
		return s.Len(), nil
	case ChannelCounter:
		n, err := s.CountChannels(ctx)
		if err != nil {
			return 0, fmt.Errorf("sessionpush: count channels: %w", err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("sessionpush: count channels: the Store cannot count: %w", errors.ErrUnsupported)
}

// Stats returns a snapshot of the Manager's counters (read one by one, not
// all at one instant) and, when the relay implements
// [relay.StatsReporter], of the relay's. It does no I/O of its own and is
// safe for concurrent use, cheap enough for every metrics scrape.
func (m *Manager) Stats() Stats {
	c := &m.counters
	s := Stats{
		ChannelsOpened: c.opened.Load(),
		ChannelsClosed: ClosedChannels{
			Logout:   c.closed[causeLogout].Load(),
			Replaced: c.closed[causeReplaced].Load(),
			Closed:   c.closed[causeClosed].Load(),
			Expired:  c.closed[causeExpired].Load(),
			Lost:     c.closed[causeLost].Load(),
		},
		OpenChannels: -1,
		Pushes:       c.pushes.Load(),
		PushFailures: PushFailures{
			InvalidID: c.pushFailed[pushInvalidID].Load(),
			TooLarge:  c.pushFailed[pushTooLarge].Load(),
			Encode:    c.pushFailed[pushEncode].Load(),
			NotFound:  c.pushFailed[pushNotFound].Load(),
			Store:     c.pushFailed[pushStore].Load(),
			Relay:     c.pushFailed[pushRelay].Load(),
		},
		RelayErrors: c.relayErrors.Load(),
		Refused: HandlerRefusals{
			Subscribe: c.refused(handlerSubscribe),
			Listen:    c.refused(handlerListen),
			Authorize: c.refused(handlerAuthorize),
		},
	}
	if l, ok := m.store.(LenStore); ok {
		s.OpenChannels = l.Len()
	}
	if r, ok := m.relay.(relay.StatsReporter); ok {
		s.Relay = r.RelayStats()
	}
	return s
}

// counters are the Manager's counters: atomics in fixed arrays, so that
// counting takes no lock and no allocation. None is on the Middleware's
// path.
type counters struct {
	opened      atomic.Uint64
	closed      [numCauses]atomic.Uint64
	pushes      atomic.Uint64
	pushFailed  [numPushFailures]atomic.Uint64
	relayErrors atomic.Uint64
	refusals    [numHandlers][numReasons]atomic.Uint64
}

func (c *counters) refused(h handler) Refusals {
	r := &c.refusals[h]
	return Refusals{
		Method:       r[reasonMethod].Load(),
		CrossOrigin:  r[reasonCrossOrigin].Load(),
		NotSignedIn:  r[reasonNotSignedIn].Load(),
		NotOwner:     r[reasonNotOwner].Load(),
		InvalidID:    r[reasonInvalidID].Load(),
		NoEndpoint:   r[reasonNoEndpoint].Load(),
		RelayRefused: r[reasonRelayRefused].Load(),
		Error:        r[reasonError].Load(),
	}
}

// closeCause is why a channel closed; its String is the "cause" of the
// log event.
type closeCause uint8

const (
	causeLogout closeCause = iota
	causeReplaced
	causeClosed
	causeExpired
	causeLost
	numCauses
)

var causeNames = [numCauses]string{"logout", "replaced", "closed", "expired", "lost"}

func (c closeCause) String() string { return causeNames[c] }

type pushFailure uint8

const (
	pushInvalidID pushFailure = iota
	pushTooLarge
	pushEncode
	pushNotFound
	pushStore
	pushRelay
	numPushFailures
)

// handler is one of the kit's handlers; its String is the "handler" of the
// refusal event.
type handler uint8

const (
	handlerSubscribe handler = iota
	handlerListen
	handlerAuthorize
	numHandlers
)

var handlerNames = [numHandlers]string{"subscribe", "listen", "authorize"}

func (h handler) String() string { return handlerNames[h] }

// reason is why a handler refused a request; its String is the "reason" of
// the refusal event.
type reason uint8

const (
	reasonMethod reason = iota
	reasonCrossOrigin
	reasonNotSignedIn
	reasonNotOwner
	reasonInvalidID
	reasonNoEndpoint
	reasonRelayRefused
	reasonError
	numReasons
)

var reasonNames = [numReasons]string{"method", "cross_origin", "not_signed_in", "not_owner", "invalid_id", "no_endpoint", "relay_refused", "error"}

func (r reason) String() string { return reasonNames[r] }

// reasonOf classifies an error of authorize.
func reasonOf(err error) reason {
	switch {
	case errors.Is(err, ErrNotSignedIn):
		return reasonNotSignedIn
	case errors.Is(err, ErrNotOwner):
		return reasonNotOwner
	case errors.Is(err, ErrInvalidChannel):
		return reasonInvalidID
	}
	return reasonError
}

// relayFailed counts a failed relay request; "no such channel" is an
// answer, not a failure.
func (m *Manager) relayFailed(err error) {
	if err != nil && !errors.Is(err, ErrChannelNotFound) {
		m.counters.relayErrors.Add(1)
	}
}

// pushFailed counts a push that published nothing.
func (m *Manager) pushFailed(f pushFailure) { m.counters.pushFailed[f].Add(1) }

// publishFailure classifies an error of relay.Publish.
func publishFailure(err error) pushFailure {
	switch {
	case errors.Is(err, ErrChannelNotFound):
		return pushNotFound
	case errors.Is(err, ErrMessageTooLarge):
		return pushTooLarge
	case errors.Is(err, ErrInvalidChannel):
		return pushInvalidID
	}
	return pushRelay
}

// The messages of the kit's log events, for handlers that pick them out.
const (
	logOpened  = "sessionpush: channel opened"
	logClosed  = "sessionpush: channel closed"
	logRefused = "sessionpush: request refused"
)

// closedChannel counts and logs the close of channel id: at Info level when it
// was not asked for (expired, lost), at Debug level otherwise.
func (m *Manager) closedChannel(ctx context.Context, id string, cause closeCause) {
	m.counters.closed[cause].Add(1)
	level := slog.LevelDebug
	if cause == causeExpired || cause == causeLost {
		level = slog.LevelInfo
	}
	m.log.LogAttrs(ctx, level, logClosed, slog.String("channel", id), slog.String("cause", cause.String()))
}

// refused counts and logs a refusal: at Error level for the kit's own
// failures, Warn for what a browser running the kit's client never sends
// (a cross-origin POST, a malformed channel ID), Info otherwise. The event
// names no user and carries nothing of the cookie or the session.
func (m *Manager) refused(r *http.Request, h handler, why reason, status int, err error) {
	m.counters.refusals[h][why].Add(1)
	level := slog.LevelInfo
	switch {
	case why == reasonError || status >= 500:
		level = slog.LevelError
	case why == reasonCrossOrigin || why == reasonInvalidID:
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("handler", h.String()),
		slog.String("reason", why.String()),
		slog.Int("status", status),
		slog.String("method", r.Method),
		slog.String("path", clipPath(r.URL.Path)),
		slog.String("remote_addr", r.RemoteAddr),
	}
	if why == reasonNotSignedIn {
		// The common cause: the application keeps its user in a session
		// of another name than Config.SessionName, or under another key.
		_, cookieErr := r.Cookie(m.name)
		attrs = append(attrs, slog.String("session", m.name), slog.Bool("session_cookie", cookieErr == nil))
	}
	if err != nil {
		attrs = append(attrs, slog.Any("err", err))
	}
	m.log.LogAttrs(r.Context(), level, logRefused, attrs...)
}

// clipPath bounds a request path for the log: a refused path may be
// anything a client sent.
func clipPath(p string) string {
	const max = 256
	if len(p) > max {
		return strings.ToValidUTF8(p[:max], "") + "…"
	}
	return p
}
