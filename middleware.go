package sessionpush

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// Session keys under which the Middleware keeps a session's channel and its
// owner. Both values are strings, so they suit gob- and JSON-encoded
// sessions alike.
const (
	SessionKeyChannel = "sessionpush.channel"
	SessionKeyOwner   = "sessionpush.owner"
)

// Defaults for the zero values of [Config], as its fields document them.
const (
	defaultSessionName    = "session"
	defaultUserKey        = "user"
	defaultListenURL      = "/sub/{channel}"
	defaultMaxMessageSize = 64 << 10
	defaultIdleTimeout    = 30 * time.Minute
	defaultConcurrency    = 16
)

// SuggestedBroadcastChannel is a broadcast channel ID for
// Config.BroadcastChannel, the one that example/nginx/nginx.conf gives its
// own subscriber location. Any canonical version-4 UUID will do; the ID is
// no secret, since every signed-in session may listen to it.
const SuggestedBroadcastChannel = "b0adca57-0000-4000-8000-000000000000"

// Config configures a [Manager]. Only Sessions is required; every other
// field has a useful zero value, given in its comment.
type Config struct {
	// Sessions is the application's session store, the one its sign-in
	// code writes to. Required: New returns ErrNoSessionStore without it.
	Sessions sessions.Store

	// SessionName is the name of the session (and of its cookie) that
	// holds the signed-in user. Zero means "session".
	SessionName string

	// UserKey is the session value that holds the signed-in user's ID: a
	// string, an integer or a fmt.Stringer; absent or empty means nobody
	// is signed in. Zero means "user". Ignored when User is set.
	UserKey string

	// User, if set, tells the signed-in user of a request instead of
	// UserKey: it returns the user's ID, or "" when nobody is signed in.
	// It runs on every request that passes the Middleware, so it must be
	// cheap and must not touch the network.
	User func(r *http.Request, s *sessions.Session) string

	// Relay carries messages to listeners. Nil means the embedded relay
	// (package hub), built by New from Hub, MaxMessageSize, OriginPatterns
	// and Logger; its listeners are served by ListenHandler. Either way
	// [Manager.Shutdown] shuts the relay down when it has a
	// Shutdown(context.Context) error method, as a *hub.Hub does.
	Relay relay.Relay

	// Hub configures the embedded relay that New builds when Relay is
	// nil: its buffer per channel, listener cap, memory budget, timeouts
	// and heartbeat, each field's zero value documented in [hub.Options]
	// (10 messages for an hour, 10 listeners per channel, 64 MiB of
	// buffered messages in all). Its MaxMessageSize and OriginPatterns
	// must stay zero: the kit's MaxMessageSize and OriginPatterns below
	// apply to every relay and to the embedded one. Its Logger defaults to
	// Logger. New returns an error when Hub is set beside Relay, which is
	// then configured on its own.
	Hub hub.Options

	// Store remembers open channels. Nil means [NewMemoryStore], which
	// suits a single application instance.
	Store Store

	// ListenURL is the template of the listening URL that
	// SubscribeHandler returns; "{channel}" is replaced by the channel
	// ID. It may be absolute or relative to the page. Zero means
	// "/sub/{channel}", where ListenHandler is meant to be mounted.
	ListenURL string

	// ErrorHandler writes the answer when a handler of the kit fails or
	// refuses a request. The error is a *[StatusError] carrying the HTTP
	// status. The kit has already counted the refusal ([Manager.Stats])
	// and logged it (the "sessionpush: request refused" event of Logger).
	// Nil means: write the status text alone, never the error's text.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)

	// Logger receives the kit's structured events, listed in the package
	// documentation (Observability): channels opened and closed, requests
	// refused, failures. They name channels, never users, and carry
	// nothing of cookies or sessions. Nil means slog.Default().
	Logger *slog.Logger

	// MaxMessageSize caps a message body in bytes; larger pushes fail
	// with ErrMessageTooLarge and nothing is published. Zero means 64 KiB.
	// With Nchan, keep nginx's client_max_body_size at least this large.
	MaxMessageSize int

	// OriginPatterns lists the other origins whose pages may use the kit
	// from the browser: open a channel with a POST to SubscribeHandler,
	// and listen over WebSocket to the embedded relay. A pattern is
	// matched without regard to case against the Origin's host, or its
	// "scheme://host" when the pattern contains "://", as path.Match
	// does: "app.example.com", "*.example.com",
	// "https://app.example.com". Nil means the page's own origin only.
	// With Nchan, nginx decides for its listeners
	// (nchan_access_control_allow_origin).
	OriginPatterns []string

	// IdleTimeout is how long an open channel may go without listeners
	// and without a call to SubscribeHandler before [Manager.ExpireIdle]
	// (run periodically by [Manager.Run]) closes it. Zero means 30
	// minutes; negative means channels never expire.
	IdleTimeout time.Duration

	// Concurrency bounds the relay requests that Broadcast and PushUser
	// make at once. Zero means 16.
	Concurrency int

	// BroadcastChannel, if set, is the ID of a broadcast channel, a
	// canonical lower-case version-4 UUID such as
	// [SuggestedBroadcastChannel] (New returns an error for anything
	// else). Every signed-in session may listen to it besides its own
	// channel: SubscribeHandler opens it and adds it to its answer
	// (Subscription.Broadcast), ListenHandler and AuthorizeHandler let
	// any signed-in session listen to it, and [Manager.Broadcast] publishes
	// once to it instead of to every open channel. It is no session
	// channel: the Store never holds it, Push, Exists and CloseChannel do
	// not know it, and ExpireIdle never closes it. Empty means no broadcast
	// channel: Broadcast fans out to every open channel.
	//
	// The trade-off: a Broadcast costs one relay request however many
	// listen, but each browser holds a second connection; broadcast
	// messages have their own IDs and buffer (one channel's buffer for
	// everybody), are not ordered relative to the session's own channel,
	// and a listener that reconnects resumes the two streams separately.
	//
	// On the embedded relay, the listener cap does not apply to it:
	// whenever SubscribeHandler opens it, the Manager lifts its cap
	// through [relay.MaxListenersSetter] (which a *hub.Hub implements),
	// on the relay that New builds and on any Config.Relay that implements
	// it; a relay without it keeps its own cap. With
	// Nchan, the nginx config needs a subscriber location of its own for
	// this ID, with no listener cap (nchan_max_channel_subscribers 0): see
	// the exact-match "location = /sub/<id>" in example/nginx/nginx.conf.
	BroadcastChannel string
}

// ErrNoSessionStore is returned by [New] when Config.Sessions is nil.
var ErrNoSessionStore = errors.New("sessionpush: Config.Sessions is nil")

// ErrSessionCodec is wrapped by the error of [New] when Config.Sessions is a
// gorilla CookieStore or FilesystemStore that cannot sign a cookie, most
// often because its hash key is empty (sessions.NewCookieStore(nil)): the
// application would start, and every sign-in would fail.
var ErrSessionCodec = errors.New("sessionpush: Config.Sessions cannot sign cookies")

// Manager binds push channels to sessions, opens and closes them on the
// relay, and pushes to them. Create it with [New]; it is safe for concurrent
// use.
type Manager struct {
	sessions     sessions.Store
	name         string
	userKey      string
	userFunc     func(*http.Request, *sessions.Session) string
	relay        relay.Relay
	origins      []string // Config.OriginPatterns
	store        Store
	listenURL    string
	errorHandler func(http.ResponseWriter, *http.Request, error)
	log          *slog.Logger
	maxSize      int
	idle         time.Duration
	concurrency  int
	broadcast    string // Config.BroadcastChannel
	now          func() time.Time

	_        [64]byte // the counters below change often: keep them off the cache lines of the fields above
	counters counters // for Stats
}

// New checks cfg, fills in its defaults and returns a Manager. It starts no
// goroutine: see [Manager.Run] for idle expiry.
func New(cfg Config) (*Manager, error) {
	if cfg.Sessions == nil {
		return nil, ErrNoSessionStore
	}
	m := &Manager{
		sessions:     cfg.Sessions,
		name:         or(cfg.SessionName, defaultSessionName),
		userKey:      or(cfg.UserKey, defaultUserKey),
		userFunc:     cfg.User,
		relay:        cfg.Relay,
		store:        cfg.Store,
		listenURL:    or(cfg.ListenURL, defaultListenURL),
		errorHandler: cfg.ErrorHandler,
		log:          cfg.Logger,
		maxSize:      orInt(cfg.MaxMessageSize, defaultMaxMessageSize),
		idle:         cfg.IdleTimeout,
		concurrency:  orInt(cfg.Concurrency, defaultConcurrency),
		broadcast:    cfg.BroadcastChannel,
		now:          time.Now,
	}
	if !strings.Contains(m.listenURL, "{channel}") {
		return nil, fmt.Errorf("sessionpush: Config.ListenURL %q has no {channel}", m.listenURL)
	}
	if m.broadcast != "" && !validChannelID(m.broadcast) {
		return nil, fmt.Errorf("sessionpush: Config.BroadcastChannel %q: %w", clip(m.broadcast), ErrInvalidChannel)
	}
	if m.maxSize < 0 || m.concurrency < 0 {
		return nil, errors.New("sessionpush: Config.MaxMessageSize and Config.Concurrency must not be negative")
	}
	if m.idle == 0 {
		m.idle = defaultIdleTimeout
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.errorHandler == nil {
		m.errorHandler = m.defaultErrorHandler
	}
	if m.store == nil {
		m.store = NewMemoryStore()
	}
	m.origins = slices.Clone(cfg.OriginPatterns)
	switch {
	case cfg.Hub.MaxMessageSize != 0 || cfg.Hub.OriginPatterns != nil:
		return nil, errors.New("sessionpush: Config.Hub.MaxMessageSize and Config.Hub.OriginPatterns must be zero: set Config.MaxMessageSize and Config.OriginPatterns, which apply to every relay")
	case m.relay != nil && !reflect.ValueOf(cfg.Hub).IsZero():
		return nil, errors.New("sessionpush: Config.Hub configures the embedded relay, and Config.Relay is set: configure that relay itself")
	case m.relay == nil:
		opts := cfg.Hub
		opts.MaxMessageSize = m.maxSize
		opts.OriginPatterns = m.origins
		if opts.Logger == nil {
			opts.Logger = m.log
		}
		m.relay = hub.New(opts)
	}
	if err := checkCodecs(cfg.Sessions); err != nil {
		return nil, err
	}
	warnCookieOptions(m.log, cfg.Sessions)
	return m, nil
}

// checkCodecs signs a probe value with the codecs of gorilla's own stores,
// so that a store without a hash key fails at New, not at the first sign-in.
func checkCodecs(s sessions.Store) error {
	var codecs []securecookie.Codec
	switch s := s.(type) {
	case *sessions.CookieStore:
		codecs = s.Codecs
	case *sessions.FilesystemStore:
		codecs = s.Codecs
	default:
		return nil
	}
	if _, err := securecookie.EncodeMulti("sessionpush-probe", "x", codecs...); err != nil {
		return fmt.Errorf("%w: %w", ErrSessionCodec, err)
	}
	return nil
}

// warnCookieOptions logs when the application's cookie store would send a
// session cookie that scripts can read or that other sites' requests carry.
func warnCookieOptions(log *slog.Logger, s sessions.Store) {
	var o *sessions.Options
	switch s := s.(type) {
	case *sessions.CookieStore:
		o = s.Options
	case *sessions.FilesystemStore:
		o = s.Options
	}
	if o != nil && (!o.HttpOnly || o.SameSite == http.SameSiteNoneMode || o.SameSite == http.SameSiteDefaultMode) {
		log.Warn("sessionpush: the session cookie should be HttpOnly with SameSite Lax or Strict",
			"http_only", o.HttpOnly, "same_site", o.SameSite)
	}
}

// Shutdown shuts the relay down when it has a Shutdown(context.Context)
// error method: the embedded relay, whether New built it or Config.Relay
// is a *hub.Hub, then ends every listener and waits for them, or until ctx
// is done. A relay without the method, such as an nchan.Client, is left as
// it is.
//
// Call it before http.Server.Shutdown, or register it with
// http.Server.RegisterOnShutdown: the embedded relay takes EventSource
// connections over from the server (see [hub.Hub.ServeListener]), so the
// server's own Shutdown neither ends nor waits for them.
func (m *Manager) Shutdown(ctx context.Context) error {
	if s, ok := m.relay.(interface{ Shutdown(context.Context) error }); ok {
		return s.Shutdown(ctx)
	}
	return nil
}

// Relay returns the relay in use: Config.Relay, or the embedded relay that
// New built.
func (m *Manager) Relay() relay.Relay { return m.relay }

// Channel is a push channel bound to a signed-in session.
type Channel struct {
	// ID is the channel ID: a canonical UUID in version 4 form.
	ID string
	// User is the ID of the user who owns the channel.
	User string

	m *Manager
}

// Push publishes msg to the channel, as [Manager.Push].
func (c *Channel) Push(ctx context.Context, msg Message) (Receipt, error) {
	return c.m.Push(ctx, c.ID, msg)
}

// PushJSON publishes v, encoded as JSON, to the channel, as
// [Manager.PushJSON].
func (c *Channel) PushJSON(ctx context.Context, v any) error {
	return c.m.PushJSON(ctx, c.ID, v)
}

type ctxKey int

const channelKey ctxKey = 0

// NewContext returns a copy of ctx that carries ch, for code below HTTP and
// for tests.
func NewContext(ctx context.Context, ch *Channel) context.Context {
	return context.WithValue(ctx, channelKey, ch)
}

// FromContext returns the channel that ctx carries, if any.
func FromContext(ctx context.Context) (*Channel, bool) {
	ch, ok := ctx.Value(channelKey).(*Channel)
	return ch, ok && ch != nil
}

// CurrentChannel returns the channel of r's signed-in session, or nil when
// nobody is signed in or the Middleware did not run.
func CurrentChannel(r *http.Request) *Channel {
	ch, _ := FromContext(r.Context())
	return ch
}

// Middleware binds a push channel to every signed-in session and puts it in
// the request context, where [CurrentChannel] finds it.
//
// When a session has a user but no channel for that user, the Middleware
// binds a new random channel ID (a version 4 UUID) and saves it in the
// session with its owner. It looks before the handler runs and again when
// the handler starts its response if the handler saved the session (the
// response sets a cookie), so the response that signs a user in already
// carries the binding, and the requests that follow, however many at once,
// agree on one channel. A change to the session that the handler does not
// save is seen on the next request. When the session's user changes or signs out,
// the old channel is closed and, for a new user, a new one bound. Binding is
// not opening: SubscribeHandler opens the channel.
//
// On other requests the work is one session decode, which the handler's own
// session Get then reuses; nothing touches the network. A cookie that fails
// to decode (tampered, expired, old keys) counts as no session.
//
// The ResponseWriter that next receives implements Unwrap, Flush and Hijack
// over the original one, so [http.NewResponseController] reaches it.
func (m *Manager) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := FromContext(r.Context()); ok {
			next.ServeHTTP(w, r)
			return
		}
		sw := &sessionWriter{ResponseWriter: w, m: m, r: r, s: m.session(r)}
		ch, ok, err := m.syncSession(w, r, sw.s)
		if err != nil {
			m.log.Error("sessionpush: binding a channel to the session", "err", err)
		}
		if ok {
			// The writer doubles as the request's context, so that the
			// channel costs no allocation of its own.
			sw.ctx = chanCtx{Context: r.Context(), ch: ch}
			r = r.WithContext(&sw.ctx)
			sw.r = r
		}
		next.ServeHTTP(sw, r)
		sw.check()
	})
}

// chanCtx is a context that carries a channel, as NewContext makes one.
type chanCtx struct {
	context.Context
	ch Channel
}

func (c *chanCtx) Value(key any) any {
	if key == channelKey {
		return &c.ch
	}
	return c.Context.Value(key)
}

// sessionWriter looks at the session once more when the handler starts its
// response, to bind a channel to a user that the handler signed in (or to
// close the channel of one it signed out).
type sessionWriter struct {
	http.ResponseWriter
	m       *Manager
	r       *http.Request
	s       *sessions.Session // the request's session, as the store's registry holds it
	ctx     chanCtx
	checked bool
}

func (w *sessionWriter) check() {
	if w.checked {
		return
	}
	w.checked = true
	if len(w.ResponseWriter.Header()["Set-Cookie"]) == 0 {
		// The handler saved no session, so it signed nobody in or out:
		// a change it made but did not save waits for the next request.
		return
	}
	s := w.s
	if s == nil {
		s = w.m.session(w.r)
	} else if ch := &w.ctx.ch; ch.ID != "" {
		// The common case: the handler left the user and the binding
		// as they were, already validated.
		if id, owner := boundValues(s); id == ch.ID && owner == ch.User && w.m.isUser(w.r, s, owner) {
			return
		}
	}
	if _, _, err := w.m.syncSession(w.ResponseWriter, w.r, s); err != nil {
		w.m.log.Error("sessionpush: binding a channel to the session", "err", err)
	}
}

func (w *sessionWriter) WriteHeader(code int) {
	w.check()
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Write(b []byte) (int, error) {
	w.check()
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps io.Copy's fast paths of the underlying writer.
func (w *sessionWriter) ReadFrom(src io.Reader) (int64, error) {
	w.check()
	return io.Copy(w.ResponseWriter, src)
}

// Unwrap returns the original ResponseWriter, for http.ResponseController.
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush flushes the original ResponseWriter if it can.
func (w *sessionWriter) Flush() {
	w.check()
	http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack hijacks the original ResponseWriter's connection if it can.
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.check()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// channel returns the request's channel, binding one if the Middleware did
// not run.
func (m *Manager) channel(w http.ResponseWriter, r *http.Request) (*Channel, error) {
	if ch, ok := FromContext(r.Context()); ok {
		return ch, nil
	}
	ch, ok, err := m.sync(w, r)
	if !ok {
		return nil, err
	}
	return &ch, err
}

// session returns r's session, or nil if it cannot be had. A decode error
// leaves a new, empty session: no user.
func (m *Manager) session(r *http.Request) *sessions.Session {
	s, err := m.sessions.Get(r, m.name)
	if err != nil && s == nil {
		m.log.Error("sessionpush: session store failed", "err", err)
	}
	return s
}

// bound returns the channel that r's session holds for its current user,
// without changing anything: nil when nobody is signed in or no channel is
// bound to this user.
func (m *Manager) bound(r *http.Request) *Channel {
	s := m.session(r)
	if s == nil {
		return nil
	}
	id, owner := boundValues(s)
	if !validChannelID(id) || !m.isUser(r, s, owner) {
		return nil
	}
	return &Channel{ID: id, User: owner, m: m}
}

func boundValues(s *sessions.Session) (id, owner string) {
	id, _ = s.Values[SessionKeyChannel].(string)
	owner, _ = s.Values[SessionKeyOwner].(string)
	return id, owner
}

// sync brings the binding of r's session in line with its user and returns
// the channel bound to that user (ok=false when nobody is signed in). It
// saves the session only when the binding changes: a new user gets a new
// channel, and the channel of a user who left the session is closed.
func (m *Manager) sync(w http.ResponseWriter, r *http.Request) (Channel, bool, error) {
	return m.syncSession(w, r, m.session(r))
}

// syncSession is sync on s, r's session as the store returned it.
func (m *Manager) syncSession(w http.ResponseWriter, r *http.Request, s *sessions.Session) (Channel, bool, error) {
	if s == nil {
		return Channel{}, false, nil
	}
	id, owner := boundValues(s)
	if validChannelID(id) && m.isUser(r, s, owner) {
		return Channel{ID: id, User: owner, m: m}, true, nil
	}
	user := m.user(r, s)
	if id == "" && owner == "" && user == "" {
		return Channel{}, false, nil
	}
	cause := causeLogout
	if user != "" {
		cause = causeReplaced
	}
	unbindErr := m.unbind(r.Context(), s, cause)
	var ch Channel
	if user != "" {
		ch = Channel{ID: uuid.NewString(), User: user, m: m}
		s.Values[SessionKeyChannel] = ch.ID
		s.Values[SessionKeyOwner] = user
	}
	if err := m.save(w, r, s); err != nil {
		return Channel{}, false, errors.Join(unbindErr, err)
	}
	return ch, user != "", unbindErr
}

// unbind closes the channel bound to s, if any, for cause, and removes it
// from s, which the caller saves.
func (m *Manager) unbind(ctx context.Context, s *sessions.Session, cause closeCause) error {
	id, _ := boundValues(s)
	delete(s.Values, SessionKeyChannel)
	delete(s.Values, SessionKeyOwner)
	if !validChannelID(id) {
		return nil
	}
	if err := m.closeChannel(ctx, id, cause); err != nil && !errors.Is(err, ErrChannelNotFound) {
		return err
	}
	return nil
}

// rebind replaces the channel bound to r's session by a new one, for when
// the relay lost the old one.
func (m *Manager) rebind(w http.ResponseWriter, r *http.Request, old *Channel) (*Channel, error) {
	s := m.session(r)
	if s == nil {
		return nil, errors.New("sessionpush: session unavailable")
	}
	ch := &Channel{ID: uuid.NewString(), User: old.User, m: m}
	s.Values[SessionKeyChannel] = ch.ID
	s.Values[SessionKeyOwner] = ch.User
	return ch, m.save(w, r, s)
}

// save saves s, replacing a session cookie that the response already sets,
// so that the response carries one, up-to-date, cookie of that name.
func (m *Manager) save(w http.ResponseWriter, r *http.Request, s *sessions.Session) error {
	h := w.Header()
	if lines := h["Set-Cookie"]; len(lines) > 0 {
		kept := lines[:0:0]
		for _, l := range lines {
			if c, err := http.ParseSetCookie(l); err != nil || c.Name != s.Name() {
				kept = append(kept, l)
			}
		}
		h["Set-Cookie"] = kept
	}
	if err := s.Save(r, w); err != nil {
		return fmt.Errorf("sessionpush: save session: %w", err)
	}
	return nil
}

// user tells the signed-in user of s.
func (m *Manager) user(r *http.Request, s *sessions.Session) string {
	if m.userFunc != nil {
		return m.userFunc(r, s)
	}
	switch v := s.Values[m.userKey].(type) {
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float64: // JSON-encoded sessions decode numbers as float64
		if v == float64(int64(v)) {
			return strconv.FormatInt(int64(v), 10)
		}
	}
	return ""
}

// isUser reports whether s's signed-in user is name, a non-empty user ID
// as m.user formats it, without formatting a numeric ID (which would
// allocate on every request).
func (m *Manager) isUser(r *http.Request, s *sessions.Session, name string) bool {
	if name == "" {
		return false
	}
	if m.userFunc != nil {
		return m.userFunc(r, s) == name
	}
	switch v := s.Values[m.userKey].(type) {
	case string:
		return v == name
	case int:
		n, err := strconv.ParseInt(name, 10, 64)
		return err == nil && n == int64(v) && canonicalInt(name)
	case int64:
		n, err := strconv.ParseInt(name, 10, 64)
		return err == nil && n == v && canonicalInt(name)
	case uint64:
		n, err := strconv.ParseUint(name, 10, 64)
		return err == nil && n == v && canonicalInt(name)
	case float64:
		n, err := strconv.ParseInt(name, 10, 64)
		return err == nil && v == float64(int64(v)) && n == int64(v) && canonicalInt(name)
	}
	return m.user(r, s) == name // fmt.Stringer and the rest
}

// canonicalInt reports whether s is an integer as strconv formats one: no
// sign but a leading '-', no leading zeros.
func canonicalInt(s string) bool {
	d := strings.TrimPrefix(s, "-")
	return d != "" && (d == "0" && d == s || d[0] != '0') && s[0] != '+'
}

// validChannelID reports whether id is a canonical, lower-case UUID of
// version 4 form, the only channel IDs the kit hands out.
func validChannelID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		case 14:
			if c != '4' {
				return false
			}
		case 19:
			if c != '8' && c != '9' && c != 'a' && c != 'b' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orInt(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}
