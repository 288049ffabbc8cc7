package sessionpush

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/sessionpush/sessionpush/relay"
)

// Errors that the kit's handlers hand to Config.ErrorHandler, wrapped in a
// [StatusError].
var (
	// ErrNotSignedIn means the request has no signed-in session.
	ErrNotSignedIn = errors.New("sessionpush: not signed in")
	// ErrNotOwner means the session does not own the channel asked for,
	// or the channel is not open.
	ErrNotOwner = errors.New("sessionpush: channel not open for this session")
	// ErrNoListenEndpoint means the relay serves its listeners itself
	// (Nchan), so ListenHandler has nothing to serve.
	ErrNoListenEndpoint = errors.New("sessionpush: the relay serves listeners itself")
)

// StatusError is the error that the kit's handlers pass to
// Config.ErrorHandler: the HTTP status to answer and its cause.
type StatusError struct {
	Status int   // the HTTP status answered, e.g. http.StatusForbidden
	Err    error // the cause, for logs only: browsers get the status text
}

// Error reports the status and its cause.
func (e *StatusError) Error() string {
	return fmt.Sprintf("sessionpush: %d %s: %v", e.Status, http.StatusText(e.Status), e.Err)
}

// Unwrap returns the cause, for errors.Is and errors.As.
func (e *StatusError) Unwrap() error { return e.Err }

// fail counts and logs the refusal of r by handler h, then hands err to
// the ErrorHandler with status.
func (m *Manager) fail(w http.ResponseWriter, r *http.Request, h handler, why reason, status int, err error) {
	m.refused(r, h, why, status, err)
	m.errorHandler(w, r, &StatusError{Status: status, Err: err})
}

func (m *Manager) defaultErrorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var se *StatusError
	if errors.As(err, &se) {
		status = se.Status
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, http.StatusText(status), status)
}

// statusOf maps a relay or store failure to the status a browser gets.
func statusOf(err error) int {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, relay.ErrClosed), errors.Is(err, relay.ErrRelayFull):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// Subscription is the JSON answer of SubscribeHandler.
type Subscription struct {
	// Channel is the session's channel ID.
	Channel string `json:"channel"`
	// Cursor is the ID of the newest message when the channel was opened
	// (or looked up), "0:0" when it has none, or empty when the relay
	// does not report one. A listener that resumes from it (EventSource
	// ?last_event_id= or Last-Event-ID) misses nothing pushed after the
	// answer was made.
	Cursor string `json:"cursor"`
	// URL is where to listen: Config.ListenURL for this channel.
	URL string `json:"url"`
	// Broadcast is the broadcast channel (Config.BroadcastChannel), to
	// listen to on a connection of its own, with its own cursor; nil
	// without one.
	Broadcast *Subscription `json:"broadcast,omitempty"`
}

// SubscribeHandler returns the handler of /subscribe (GET or POST). It opens
// the session's channel on the relay and answers a [Subscription] as JSON,
// or the bare channel ID when the request accepts text/plain and not JSON.
// A request without a signed-in session gets 401.
//
// It is idempotent: while the channel is open the same ID comes back with
// a fresh cursor; when the relay reports the channel gone, a new channel is
// bound, opened and returned. Concurrent calls of one session open one
// channel. It works with or without the Middleware in front of it. A POST
// that a browser sends from another origin gets 403
// ([http.CrossOriginProtection]), unless the origin matches
// Config.OriginPatterns; the page then reads the answer only if the
// application sends CORS headers for it, which the kit does not.
func (m *Manager) SubscribeHandler() http.Handler {
	return http.HandlerFunc(m.serveSubscribe)
}

func (m *Manager) serveSubscribe(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		m.fail(w, r, handlerSubscribe, reasonMethod, http.StatusMethodNotAllowed, fmt.Errorf("sessionpush: method %s on /subscribe", r.Method))
		return
	}
	if err := m.checkOrigin(r); err != nil {
		m.fail(w, r, handlerSubscribe, reasonCrossOrigin, http.StatusForbidden, fmt.Errorf("sessionpush: /subscribe: %w", err))
		return
	}
	ch, err := m.channel(w, r)
	if err != nil {
		m.fail(w, r, handlerSubscribe, reasonError, http.StatusInternalServerError, err)
		return
	}
	if ch == nil {
		m.fail(w, r, handlerSubscribe, reasonNotSignedIn, http.StatusUnauthorized, ErrNotSignedIn)
		return
	}
	sub, err := m.open(w, r, ch)
	if err == nil && m.broadcast != "" {
		sub.Broadcast, err = m.openBroadcast(r.Context())
	}
	if err != nil {
		m.fail(w, r, handlerSubscribe, reasonError, statusOf(err), err)
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Cookie")
	h.Add("Vary", "Accept")
	if acceptsPlain(r.Header.Get("Accept")) {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, sub.Channel)
		return
	}
	h.Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(sub)
}

// crossOrigin refuses POSTs that a browser sends from another origin
// (Sec-Fetch-Site, or Origin against Host); requests without those headers,
// such as curl's, pass.
var crossOrigin = http.NewCrossOriginProtection()

// checkOrigin refuses a POST that a browser sends from another origin than
// the page's own, unless that origin matches Config.OriginPatterns: the one
// origin policy of the kit, which the embedded relay applies to WebSocket
// listeners too.
func (m *Manager) checkOrigin(r *http.Request) error {
	err := crossOrigin.Check(r)
	if err != nil && originMatches(r.Header.Get("Origin"), m.origins) {
		return nil
	}
	return err
}

// originMatches reports whether origin ("scheme://host[:port]") matches one
// of patterns as the embedded relay matches a WebSocket's Origin: a
// pattern is matched with path.Match, without regard to case, against the
// origin's host, or against "scheme://host" when the pattern contains
// "://". A malformed pattern matches nothing.
func originMatches(origin string, patterns []string) bool {
	if origin == "" || len(patterns) == 0 {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// acceptsPlain reports whether an Accept header asks for text/plain rather
// than JSON.
func acceptsPlain(accept string) bool {
	return strings.Contains(accept, "text/plain") && !strings.Contains(accept, "json")
}

// open makes sure ch is open on the relay and in the store, replacing it
// when the relay lost it, and returns the subscription.
func (m *Manager) open(w http.ResponseWriter, r *http.Request, ch *Channel) (Subscription, error) {
	ctx := r.Context()
	rec, ok, err := m.store.Get(ctx, ch.ID)
	if err != nil {
		return Subscription{}, fmt.Errorf("sessionpush: store get %s: %w", ch.ID, err)
	}
	switch {
	case ok && rec.User != ch.User: // held by another user: not with keyed IDs, but never share
		if ch, err = m.rebind(w, r, ch); err != nil {
			return Subscription{}, err
		}
	case ok:
		info, err := m.relay.Info(ctx, ch.ID)
		m.relayFailed(err)
		if err == nil {
			found, err := m.store.Touch(ctx, ch.ID, m.now())
			if err != nil {
				return Subscription{}, fmt.Errorf("sessionpush: store touch %s: %w", ch.ID, err)
			}
			if found {
				return m.subscription(ch.ID, info.LastMessageID), nil
			}
			// Expired meanwhile (by another instance): its listeners are
			// being ended, so the session gets a new channel.
		} else if !errors.Is(err, relay.ErrChannelNotFound) {
			return Subscription{}, fmt.Errorf("sessionpush: relay info %s: %w", ch.ID, err)
		}
		removed, err := m.store.Remove(ctx, ch.ID)
		if err != nil {
			return Subscription{}, fmt.Errorf("sessionpush: store remove %s: %w", ch.ID, err)
		}
		if removed {
			m.closedChannel(ctx, ch.ID, causeLost)
		}
		if ch, err = m.rebind(w, r, ch); err != nil {
			return Subscription{}, err
		}
	}
	cursor, err := m.relay.Open(ctx, ch.ID)
	if err != nil {
		m.relayFailed(err)
		return Subscription{}, fmt.Errorf("sessionpush: relay open %s: %w", ch.ID, err)
	}
	now := m.now()
	if err := m.store.Add(ctx, Record{ID: ch.ID, User: ch.User, Opened: now, LastSeen: now}); err != nil {
		cerr := m.relay.Close(context.WithoutCancel(ctx), ch.ID)
		m.relayFailed(cerr)
		return Subscription{}, errors.Join(fmt.Errorf("sessionpush: store add %s: %w", ch.ID, err), cerr)
	}
	m.counters.opened.Add(1)
	m.log.LogAttrs(ctx, slog.LevelDebug, logOpened, slog.String("channel", ch.ID))
	return m.subscription(ch.ID, cursor), nil
}

// openBroadcast opens the broadcast channel on the relay (idempotent) and
// returns its subscription. On a relay with a per-channel listener cap (the
// embedded relay), the channel gets no cap.
func (m *Manager) openBroadcast(ctx context.Context) (*Subscription, error) {
	cursor, err := m.relay.Open(ctx, m.broadcast)
	if err != nil {
		m.relayFailed(err)
		return nil, fmt.Errorf("sessionpush: relay open broadcast %s: %w", m.broadcast, err)
	}
	if c, ok := m.relay.(relay.MaxListenersSetter); ok {
		if err := c.SetMaxListeners(m.broadcast, -1); err != nil {
			return nil, fmt.Errorf("sessionpush: broadcast %s: %w", m.broadcast, err)
		}
	}
	sub := m.subscription(m.broadcast, cursor)
	return &sub, nil
}

func (m *Manager) subscription(id, cursor string) Subscription {
	return Subscription{Channel: id, Cursor: cursor, URL: strings.ReplaceAll(m.listenURL, "{channel}", id)}
}

// ListenHandler returns the embedded relay's listening endpoint, meant
// for "GET /sub/{channel}": the channel ID comes from the path value
// "channel", or else from the last element of the path. It answers 400 for
// a malformed ID and 403 unless the request's session owns that open
// channel (for the broadcast channel of Config.BroadcastChannel: unless the
// request has a signed-in session); then the relay serves the listener:
// WebSocket for an upgrade request, EventSource when the request accepts
// text/event-stream, long-poll otherwise. Ownership is checked on every
// request: every long-poll, every stream and WebSocket handshake. A stream
// of the broadcast channel is not ended by a logout; it stops at its next
// reconnect.
//
// With a relay that serves its listeners itself (Nchan) it answers 404.
func (m *Manager) ListenHandler() http.Handler {
	return http.HandlerFunc(m.serveListen)
}

func (m *Manager) serveListen(w http.ResponseWriter, r *http.Request) {
	srv, ok := m.relay.(relay.ListenerServer)
	if !ok {
		m.fail(w, r, handlerListen, reasonNoEndpoint, http.StatusNotFound, ErrNoListenEndpoint)
		return
	}
	id := r.PathValue("channel")
	if id == "" {
		id = path.Base(r.URL.Path)
	}
	w.Header().Add("Vary", "Cookie")
	if !validChannelID(id) {
		m.fail(w, r, handlerListen, reasonInvalidID, http.StatusBadRequest, fmt.Errorf("%w: not a channel id of this kit", ErrInvalidChannel))
		return
	}
	if err := m.authorize(r, id); err != nil {
		m.fail(w, r, handlerListen, reasonOf(err), http.StatusForbidden, err)
		return
	}
	srv.ServeListener(&refusalWriter{ResponseWriter: w, m: m, r: r}, r, id)
}

// refusalWriter counts and logs the relay's refusal of a listener (a 403
// answer) before it goes out. Flush and Hijack reach the original
// ResponseWriter through Unwrap (http.ResponseController, coder/websocket).
type refusalWriter struct {
	http.ResponseWriter
	m       *Manager
	r       *http.Request
	written bool // WriteHeader was called
}

func (w *refusalWriter) WriteHeader(code int) {
	if !w.written {
		w.written = true
		if code == http.StatusForbidden {
			w.m.refused(w.r, handlerListen, reasonRelayRefused, code, nil)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap returns the original ResponseWriter, for http.ResponseController.
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// AuthorizeHeader is the request header from which AuthorizeHandler takes
// the channel ID; the nginx config sets it from $nchan_channel_id.
const AuthorizeHeader = "X-Channel-Id"

// AuthorizeHandler returns the endpoint for Nchan's nchan_authorize_request:
// nginx asks it, with the listener's own headers (so its session cookie) and
// the channel ID in the [AuthorizeHeader] header, whether the listener may
// subscribe. It answers 204 when the request's session owns that open
// channel, or is signed in and asks for the broadcast channel of
// Config.BroadcastChannel, and 403 otherwise: no session, another session's
// channel, a channel not open, a malformed ID. nginx relays a refusal to the
// listener unchanged, so the body is the status text alone.
//
//	location = /authorize {
//	    internal;
//	    proxy_pass http://app/authorize;
//	    proxy_pass_request_body off;
//	    proxy_set_header Content-Length "";
//	    proxy_set_header X-Channel-Id $nchan_channel_id;
//	}
func (m *Manager) AuthorizeHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		id := r.Header.Get(AuthorizeHeader)
		if !validChannelID(id) {
			m.fail(w, r, handlerAuthorize, reasonInvalidID, http.StatusForbidden, fmt.Errorf("%w: %q in %s", ErrInvalidChannel, clip(id), AuthorizeHeader))
			return
		}
		if err := m.authorize(r, id); err != nil {
			m.fail(w, r, handlerAuthorize, reasonOf(err), http.StatusForbidden, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// authorize reports whether r's session owns the open channel id, or, for
// the broadcast channel, whether r has a signed-in session.
func (m *Manager) authorize(r *http.Request, id string) error {
	if m.broadcast != "" && id == m.broadcast {
		if !m.signedIn(r) {
			return ErrNotSignedIn
		}
		return nil
	}
	ch, _ := FromContext(r.Context())
	if ch == nil {
		ch = m.bound(r)
	}
	if ch == nil {
		return ErrNotSignedIn
	}
	if ch.ID != id {
		return ErrNotOwner
	}
	rec, ok, err := m.store.Get(r.Context(), id)
	if err != nil {
		return fmt.Errorf("sessionpush: store get %s: %w", id, err)
	}
	if !ok || rec.User != ch.User {
		return ErrNotOwner
	}
	return nil
}

// signedIn reports whether r has a signed-in session.
func (m *Manager) signedIn(r *http.Request) bool {
	if _, ok := FromContext(r.Context()); ok {
		return true
	}
	s := m.session(r)
	return s != nil && m.user(r, s) != ""
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
