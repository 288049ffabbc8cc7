package sessionpush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

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
