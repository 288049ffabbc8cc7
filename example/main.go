// Command example is a small application that shows sessionpush at work:
// sign in with any name, and the page shows, live, what you push to yourself
// and what anyone broadcasts, over WebSocket, EventSource or long-poll.
//
//	go run ./example                        # then open http://127.0.0.1:8080
//	go run ./example -addr 127.0.0.1:9000 -debug
//	go run ./example -tls-self-signed -secure  # then open https://127.0.0.1:8080
//
// With -tls-cert and -tls-key, or -tls-self-signed (a certificate for
// 127.0.0.1 and localhost made in memory at start, which browsers warn
// about), it serves HTTPS, with HTTP/2.
//
// It uses the embedded relay, unless -publish-url names an Nchan publisher:
// then it publishes there and nginx serves the listeners. With -redis and
// without -publish-url it uses redishub, the relay shared through Redis, so
// that several instances serve any channel's listeners (docs/scaling.md). nginx/nginx.conf
// serves the app and Nchan on one origin:
//
//	go run ./example -publish-url 'http://127.0.0.1:8091/pub/{channel}' -subscribe-url '/sub/{channel}'
//	nginx -e stderr -p "$(mktemp -d)" -c "$PWD/example/nginx/nginx.conf"   # then open http://127.0.0.1:8081
//
// nginx serves the publisher on a loopback port of its own (8091), apart
// from the public one (8081) that browsers and proxies reach.
//
// Sessions live in cookies signed with -session-key (64 hex digits), or
// SESSIONPUSH_SESSION_KEY when the flag is absent; without either, with a
// key made at start, so that they end when the program does. A session that
// outlives a restart keeps its channel ID: its next /subscribe opens that
// channel again on the (new, empty) embedded relay.
//
// Routes:
//
//	POST /login          form user=<name>: sign in, 303 to /
//	POST /logout         close the channel, clear the session, 303 to /
//	GET|POST /subscribe  open the session's channel: {"channel","cursor","url"}, and with
//	                     -broadcast-channel "broadcast": {"channel","cursor","url"} too
//	GET /sub/{channel}   listen (WebSocket, EventSource or long-poll); 404 with -publish-url
//	GET /authorize       for nchan_authorize_request: 204 if the session owns the channel
//	POST /push           push the JSON body to your own channel
//	POST /broadcast      for the -admin user only: push the JSON body to every open
//	                     channel (or the broadcast channel): {"channels":C,"listeners":L}
//	GET /                the page
//	GET /client.js       the browser client
//
// What one request may cost the relay is bounded, as a real application
// would bound it: bodies of /push and /broadcast are at most 4 KiB (413),
// each session may send 10 of them at once and then one a second (429 with
// Retry-After), and only the user named by -admin may broadcast (403 for
// everyone else; nobody without -admin). A relay out of memory
// (sessionpush.ErrRelayFull) gives 503 with Retry-After.
package main

import (
	"context"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/redishub"
	"github.com/sessionpush/sessionpush/redisstore"
)

//go:embed index.html
var files embed.FS

var page = template.Must(template.ParseFS(files, "index.html"))

// The session that holds the signed-in user, as the Manager reads it by
// default.
const (
	sessionName = "session" // sessionpush.Config.SessionName's default
	userKey     = "user"    // sessionpush.Config.UserKey's default
)

// maxBody caps the JSON bodies of /push and /broadcast: what a chat line or
// a notification needs, far below the Manager's limit
// (sessionpush.Config.MaxMessageSize, 64 KiB by default), so that a channel's buffer of
// 10 messages holds at most 40 KiB.
const maxBody = 4 << 10

// The token bucket of each session for /push and /broadcast: sendBurst
// requests at once, then one every sendEvery.
const (
	sendBurst = 10 // a channel's buffer (hub.Options.BufferLength's default)
	sendEvery = time.Second
)

// relayFullRetry is the Retry-After of a 503 when the relay is out of
// memory: messages expire meanwhile.
const relayFullRetry = 10 * time.Second

var validUser = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

// run serves the example until ctx is done or SIGINT or SIGTERM arrives,
// then shuts down gracefully. It logs to stdout.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen on this `address`")
	secure := fs.Bool("secure", false, "mark the session cookie Secure (when served over https)")
	debug := fs.Bool("debug", false, "log debug events too (channels opened and closed, refused requests)")
	// Empty: the embedded relay. Else an nchan.Client publishes to this
	// template and nginx serves the listeners (see nginx/nginx.conf).
	publishURL := fs.String("publish-url", "", "publish to the Nchan publisher `URL` with {channel}, e.g. http://127.0.0.1:8091/pub/{channel} (nginx/nginx.conf)")
	// Config.ListenURL: where /subscribe sends the page to listen.
	subscribeURL := fs.String("subscribe-url", "", "the listening `URL` with {channel} that /subscribe returns, relative to the page or absolute (default /sub/{channel})")
	// Empty: the in-memory channel store. Else redisstore on this Redis,
	// which several instances of the example can share.
	// Without -publish-url, the relay is then redishub on the same Redis.
	redisAddr := fs.String("redis", "", "keep open channels in the Redis at `address` (host:port) instead of in memory, and without -publish-url share the relay through it (redishub)")
	// Config.BroadcastChannel: empty, Broadcast fans out to every open
	// channel; else every signed-in session also listens to this channel
	// and Broadcast publishes once to it. With Nchan, nginx/nginx.conf has
	// the location for sessionpush.SuggestedBroadcastChannel.
	broadcastChannel := fs.String("broadcast-channel", "", "also open the broadcast channel with this `id` (a lower-case UUIDv4, e.g. "+sessionpush.SuggestedBroadcastChannel+") to every signed-in session, and broadcast with one publish to it")
	// Broadcasts cost the relay one message per open channel (or one on
	// the broadcast channel that every session listens to): only this
	// user may send them.
	admin := fs.String("admin", "", "let the user `name` broadcast (/broadcast); nobody else may, and without it nobody")
	sessionKey := fs.String("session-key", "", "sign session cookies with this `key` of 64 hex digits, so that sessions survive a restart (default $"+sessionKeyEnv+", else a random key)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS (and HTTP/2) with the certificate chain in this PEM `file`; needs -tls-key")
	tlsKey := fs.String("tls-key", "", "the private key of -tls-cert, a PEM `file`")
	selfSigned := fs.Bool("tls-self-signed", false, "serve HTTPS (and HTTP/2) with a self-signed certificate for 127.0.0.1 and localhost, made in memory at start")
	// hub.Options.WriteTimeout of the embedded relay; zero: its default.
	writeTimeout := fs.Duration("write-timeout", 0, "bound each write to a listener of the embedded relay by this `duration` (default 10s)")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	tlsConfig, err := serverTLS(*tlsCert, *tlsKey, *selfSigned)
	if err != nil {
		return err
	}
	if *writeTimeout < 0 {
		return errors.New("-write-timeout must not be negative")
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: level}))

	if *sessionKey == "" {
		*sessionKey = os.Getenv(sessionKeyEnv)
	}
	key, err := parseSessionKey(*sessionKey)
	if err != nil {
		return err
	}
	if *admin != "" && !validUser.MatchString(*admin) {
		return errors.New("-admin: 1 to 64 letters, digits, '_' or '-'")
	}
	if key == nil {
		key = securecookie.GenerateRandomKey(32)
		log.Info("session cookies are signed with a key made at start: sessions do not survive a restart (see -session-key)")
	}
	store := newSessionStoreWithKey(key, *secure)
	cfg := sessionpush.Config{Sessions: store, Logger: log, ListenURL: *subscribeURL, BroadcastChannel: *broadcastChannel}
	if *publishURL != "" {
		nc, err := nchan.New(*publishURL, nchan.Options{Logger: log})
		if err != nil {
			return err
		}
		defer nc.CloseIdleConnections() // nginx's graceful stop waits for them
		cfg.Relay = nc                  // ListenHandler answers 404: nginx serves /sub
		log.Info("publishing to Nchan", "url", *publishURL)
	}
	if *redisAddr != "" {
		rc := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer rc.Close() // after mgr.Shutdown, deferred later, has run
		cfg.Store = redisstore.New(rc, redisstore.Options{})
		log.Info("channel store on Redis", "addr", *redisAddr)
		if cfg.Relay == nil {
			// Without Nchan: the relay shared through Redis, so that any
			// instance serves the listeners of any channel.
			rh, err := redishub.New(rc, redishub.Options{Hub: hub.Options{WriteTimeout: *writeTimeout}, Logger: log})
			if err != nil {
				return err
			}
			defer rh.Shutdown(context.Background()) // if run returns before mgr.Shutdown
			cfg.Relay = rh
			log.Info("relay shared through Redis (redishub)", "addr", *redisAddr)
		}
	}
	if cfg.Relay == nil {
		cfg.Hub.WriteTimeout = *writeTimeout // the embedded relay's; zero: its default
	}
	mgr, err := sessionpush.New(cfg)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           newApp(mgr, store, log, appConfig{Admin: *admin}),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second, // the relay lifts it for its listeners
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConfig, // nil: plain HTTP
	}
	scheme, serve := "http", srv.Serve
	if tlsConfig != nil {
		// ServeTLS offers HTTP/2 (ALPN "h2") and HTTP/1.1.
		scheme = "https"
		serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
	}
	expiring := make(chan struct{})
	go func() {
		mgr.Run(ctx) // closes idle channels until ctx is done
		close(expiring)
	}()
	served := make(chan error, 1)
	go func() { served <- serve(ln) }()
	log.Info("listening", "url", scheme+"://"+ln.Addr().String())

	select {
	case err = <-served:
	case <-ctx.Done():
		log.Info("shutting down")
	}
	stop()
	<-expiring

	// Stop accepting and wait for the requests in flight. Long-polls and
	// streams would hold that up, so once the listening sockets are closed
	// the relay ends its listeners (410, as Nchan does when it stops).
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayDone := make(chan error, 1)
	srv.RegisterOnShutdown(func() {
		relayDone <- mgr.Shutdown(sctx)
	})
	err = errors.Join(err, srv.Shutdown(sctx), <-relayDone)
	log.Info("stopped", "err", err)
	return err
}

// sessionKeyEnv names the environment variable that gives the session key
// when -session-key is absent.
const sessionKeyEnv = "SESSIONPUSH_SESSION_KEY"

// parseSessionKey decodes a session key of 64 hex digits (32 bytes, the
// HMAC-SHA256 key of the cookies); empty gives nil.
func parseSessionKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	key, err := hex.DecodeString(s)
	if err != nil || len(key) != 32 {
		return nil, errors.New("-session-key (or " + sessionKeyEnv + "): want 64 hex digits")
	}
	return key, nil
}

// newSessionStore returns the cookie store of the example's sessions, signed
// with a random key.
func newSessionStore(secure bool) *sessions.CookieStore {
	return newSessionStoreWithKey(securecookie.GenerateRandomKey(32), secure)
}

// newSessionStoreWithKey returns the cookie store of the example's
// sessions, signed with key.
func newSessionStoreWithKey(key []byte, secure bool) *sessions.CookieStore {
	store := sessions.NewCookieStore(key)
	store.Options.HttpOnly = true                 // out of reach of scripts
	store.Options.SameSite = http.SameSiteLaxMode // not sent on other sites' POSTs
	store.Options.Secure = secure                 // plain http on 127.0.0.1 by default
	return store
}

// appConfig holds the settings of the routes.
type appConfig struct {
	// Admin is the user who may broadcast; empty: nobody.
	Admin string
	// Now is the clock of the send limit; nil means time.Now.
	Now func() time.Time
}

type app struct {
	mgr      *sessionpush.Manager
	sessions sessions.Store
	log      *slog.Logger
	admin    string
	sends    *limiter // per session: /push and /broadcast
}

// newApp returns the example's routes behind the Manager's middleware, which
// gives every signed-in request its channel.
func newApp(mgr *sessionpush.Manager, store sessions.Store, log *slog.Logger, cfg appConfig) http.Handler {
	a := &app{mgr: mgr, sessions: store, log: log, admin: cfg.Admin, sends: newLimiter(sendBurst, sendEvery, cfg.Now)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /logout", a.logout)
	mux.Handle("GET /subscribe", mgr.SubscribeHandler())
	mux.Handle("POST /subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.Handle("GET /authorize", mgr.AuthorizeHandler())
	mux.HandleFunc("POST /push", a.push)
	mux.HandleFunc("POST /broadcast", a.broadcast)
	mux.HandleFunc("GET /{$}", a.home)
	mux.Handle("GET /client.js", sessionpush.ClientHandler())
	// Browsers' cross-origin POSTs (sign-in, logout, push, broadcast) are
	// refused: the session cookie is SameSite=Lax, and this checks
	// Sec-Fetch-Site / Origin too. curl, which sends neither, passes.
	return http.NewCrossOriginProtection().Handler(mgr.Middleware(mux))
}

// home renders the page: the sign-in form, or who you are and the live view.
func (a *app) home(w http.ResponseWriter, r *http.Request) {
	var data struct {
		User  string
		Admin bool
	}
	if ch := sessionpush.CurrentChannel(r); ch != nil { // only signed-in sessions have one
		data.User = ch.User
		data.Admin = a.admin != "" && ch.User == a.admin
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Add("Vary", "Cookie")
	if err := page.Execute(w, data); err != nil {
		a.log.Error("rendering the page", "err", err)
	}
}

// login signs the user in. The Middleware binds a channel to the session
// in this very response; /subscribe opens it.
func (a *app) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<10)
	user := r.PostFormValue("user")
	if !validUser.MatchString(user) {
		http.Error(w, "user: 1 to 64 letters, digits, '_' or '-'", http.StatusBadRequest)
		return
	}
	s, _ := a.sessions.Get(r, sessionName) // a bad cookie gives a new session
	s.Values[userKey] = user
	if err := s.Save(r, w); err != nil {
		a.log.Error("saving the session", "err", err)
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	a.log.Info("signed in", "user", user)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout signs the user out: the user leaves the session first, so that the
// one save that mgr.Close makes carries it, and the cookie is dropped.
func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if s, _ := a.sessions.Get(r, sessionName); s != nil {
		delete(s.Values, userKey)
		s.Options.MaxAge = -1
	}
	if err := a.mgr.SignOut(w, r); err != nil { // ends the channel's listeners
		a.log.Error("signing out", "err", err)
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// push pushes the JSON body to the caller's own channel: 204 when done.
func (a *app) push(w http.ResponseWriter, r *http.Request) {
	ch := sessionpush.CurrentChannel(r)
	if ch == nil {
		writeJSON(w, http.StatusUnauthorized, errorJSON("sign in first"))
		return
	}
	if !a.allowSend(w, ch) {
		return
	}
	body, ok := readJSON(w, r)
	if !ok {
		return
	}
	err := ch.PushJSON(r.Context(), json.RawMessage(body))
	switch {
	case errors.Is(err, sessionpush.ErrChannelNotFound):
		writeJSON(w, http.StatusConflict, errorJSON("channel not open: call /subscribe first"))
	case errors.Is(err, sessionpush.ErrRelayFull):
		a.log.Warn("push: the relay is full", "user", ch.User, "err", err)
		relayFull(w)
	case err != nil:
		a.log.Error("push", "user", ch.User, "err", err)
		writeJSON(w, http.StatusBadGateway, errorJSON("push failed"))
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// broadcast pushes the JSON body to every open channel and answers how many
// received it. Only the -admin user may.
func (a *app) broadcast(w http.ResponseWriter, r *http.Request) {
	ch := sessionpush.CurrentChannel(r)
	if ch == nil {
		writeJSON(w, http.StatusUnauthorized, errorJSON("sign in first"))
		return
	}
	if a.admin == "" || ch.User != a.admin {
		writeJSON(w, http.StatusForbidden, errorJSON("only the administrator may broadcast"))
		return
	}
	if !a.allowSend(w, ch) {
		return
	}
	body, ok := readJSON(w, r)
	if !ok {
		return
	}
	res, err := a.mgr.Broadcast(r.Context(), json.RawMessage(body))
	switch {
	case err != nil && res.Channels == 0 && errors.Is(err, sessionpush.ErrRelayFull):
		a.log.Warn("broadcast: the relay is full", "err", err)
		relayFull(w)
	case err != nil:
		a.log.Error("broadcast", "channels", res.Channels, "err", err)
		writeJSON(w, http.StatusBadGateway, map[string]any{"channels": res.Channels, "listeners": res.Listeners, "error": "some channels failed"})
	default:
		writeJSON(w, http.StatusOK, map[string]int{"channels": res.Channels, "listeners": res.Listeners})
	}
}

// allowSend takes a token of the session's bucket, or answers 429 with
// Retry-After and reports false.
func (a *app) allowSend(w http.ResponseWriter, ch *sessionpush.Channel) bool {
	ok, wait := a.sends.allow(ch.ID)
	if !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		writeJSON(w, http.StatusTooManyRequests, errorJSON("too many messages: wait a moment"))
	}
	return ok
}

// relayFull answers 503 when the relay is out of memory.
func relayFull(w http.ResponseWriter) {
	w.Header().Set("Retry-After", strconv.Itoa(int(relayFullRetry/time.Second)))
	writeJSON(w, http.StatusServiceUnavailable, errorJSON("push is busy: try again later"))
}

// readJSON reads a body that must be one JSON value of at most maxBody
// bytes. Otherwise it answers 400 (413 when too large) and reports false.
func readJSON(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeJSON(w, http.StatusRequestEntityTooLarge, errorJSON("body over 4 KiB"))
	case err != nil:
		writeJSON(w, http.StatusBadRequest, errorJSON("cannot read the body"))
	case !json.Valid(body):
		writeJSON(w, http.StatusBadRequest, errorJSON("body is not JSON"))
	default:
		return body, true
	}
	return nil, false
}

func errorJSON(msg string) map[string]string { return map[string]string{"error": msg} }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// limiter is a token bucket per key: burst tokens, one more every every.
// Full buckets are dropped now and then, so that it holds about the keys
// seen within the last burst × every.
type limiter struct {
	burst float64
	every time.Duration
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	pruneSize int // prune when the map reaches this size
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(burst int, every time.Duration, now func() time.Time) *limiter {
	if now == nil {
		now = time.Now
	}
	return &limiter{burst: float64(burst), every: every, now: now, buckets: map[string]*bucket{}, pruneSize: 1024}
}

// allow takes a token for key, or reports false and how long until one is
// there.
func (l *limiter) allow(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.pruneSize {
			l.prune(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
	b.at = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) * float64(l.every))
	}
	b.tokens--
	return true, 0
}

// prune drops the buckets that are full by now.
func (l *limiter) prune(now time.Time) {
	full := time.Duration(l.burst * float64(l.every))
	for k, b := range l.buckets {
		if now.Sub(b.at) >= full {
			delete(l.buckets, k)
		}
	}
	l.pruneSize = max(1024, 2*len(l.buckets))
}
