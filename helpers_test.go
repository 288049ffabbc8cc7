package sessionpush_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/relaytest"
)

// app is a small application on the kit, served over real HTTP.
type app struct {
	t        *testing.T
	mgr      *sessionpush.Manager
	relay    *countingRelay
	sessions *sessions.CookieStore
	srv      *httptest.Server
}

// countingRelay wraps the embedded relay and counts the listeners that
// reach it.
type countingRelay struct {
	*hub.Hub
	served atomic.Int64
}

func (c *countingRelay) ServeListener(w http.ResponseWriter, r *http.Request, channel string) {
	c.served.Add(1)
	c.Hub.ServeListener(w, r, channel)
}

func newApp(t *testing.T, mod func(*sessionpush.Config)) *app {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	store := sessions.NewCookieStore(key)
	store.Options.HttpOnly = true
	store.Options.SameSite = http.SameSiteLaxMode
	store.Options.Secure = false
	h := hub.New(hub.Options{LongPollTimeout: 20 * time.Second})
	a := &app{t: t, relay: &countingRelay{Hub: h}, sessions: store}
	cfg := sessionpush.Config{Sessions: store, Relay: a.relay, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	mgr, err := sessionpush.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.mgr = mgr

	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		if err := s.Save(r, w); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		delete(s.Values, "user")
		if err := mgr.SignOut(w, r); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.Handle("/subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.Handle("GET /authorize", mgr.AuthorizeHandler())
	mux.HandleFunc("POST /push", func(w http.ResponseWriter, r *http.Request) {
		ch := sessionpush.CurrentChannel(r)
		if ch == nil {
			http.Error(w, "not signed in", http.StatusUnauthorized)
			return
		}
		var v any
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			http.Error(w, "bad json", 400)
			return
		}
		if err := ch.PushJSON(r.Context(), v); err != nil {
			http.Error(w, "push failed", http.StatusConflict)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		if ch := sessionpush.CurrentChannel(r); ch != nil {
			io.WriteString(w, ch.User+" "+ch.ID)
		}
	})
	a.srv = httptest.NewServer(mgr.Middleware(mux))
	t.Cleanup(func() {
		a.srv.CloseClientConnections()
		a.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("hub shutdown: %v", err)
		}
	})
	return a
}

// browser is one cookie jar: one session.
type browser struct {
	t   *testing.T
	a   *app
	c   *http.Client
	sub sessionpush.Subscription
}

func (a *app) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: a.t, a: a, c: &http.Client{Jar: jar}}
}

func (b *browser) do(method, path string, body io.Reader, hdr ...string) *http.Response {
	b.t.Helper()
	req, err := http.NewRequest(method, b.a.srv.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp
}

func (b *browser) status(method, path string, body io.Reader, hdr ...string) int {
	b.t.Helper()
	resp := b.do(method, path, body, hdr...)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// get returns the body of a GET, whatever its status.
func (b *browser) get(path string, hdr ...string) string {
	b.t.Helper()
	return readAll(b.t, b.do("GET", path, nil, hdr...))
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func (b *browser) login(user string) *browser {
	b.t.Helper()
	if code := b.status("POST", "/login", strings.NewReader(url.Values{"user": {user}}.Encode()),
		"Content-Type", "application/x-www-form-urlencoded"); code != 200 {
		b.t.Fatalf("login: %d", code)
	}
	return b
}

func (b *browser) subscribe() sessionpush.Subscription {
	b.t.Helper()
	resp := b.do("POST", "/subscribe", nil)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b.t.Fatalf("/subscribe: %d", resp.StatusCode)
	}
	var s sessionpush.Subscription
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		b.t.Fatal(err)
	}
	b.sub = s
	return s
}

func (b *browser) push(v string) {
	b.t.Helper()
	if code := b.status("POST", "/push", strings.NewReader(v)); code != 204 {
		b.t.Fatalf("push %s: %d", v, code)
	}
}

// poll makes one long-poll request; hdr are header name/value pairs.
func (b *browser) poll(path string, hdr ...string) (int, string, http.Header) {
	b.t.Helper()
	resp := b.do("GET", path, nil, hdr...)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// walk long-polls n messages from the position given by hdr, following
// Last-Modified/Etag, and returns the bodies and the last position.
func (b *browser) walk(path string, n int, hdr ...string) (bodies []string, ims, inm string) {
	b.t.Helper()
	for range n {
		code, body, h := b.poll(path, hdr...)
		if code != 200 {
			b.t.Fatalf("long-poll: %d after %q", code, bodies)
		}
		bodies = append(bodies, body)
		ims, inm = h.Get("Last-Modified"), h.Get("Etag")
		hdr = []string{"If-Modified-Since", ims, "If-None-Match", inm}
	}
	return bodies, ims, inm
}

// stream is an open EventSource response.
type stream struct {
	resp *http.Response
	r    *bufio.Reader
}

func (b *browser) listen(path string, hdr ...string) (*stream, int) {
	b.t.Helper()
	resp := b.do("GET", path, nil, append([]string{"Accept", "text/event-stream"}, hdr...)...)
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	s := &stream{resp: resp, r: bufio.NewReader(resp.Body)}
	b.t.Cleanup(func() { resp.Body.Close() })
	return s, 200
}

// next returns the next event; ok is false when the stream ended.
func (s *stream) next() (relaytest.Event, bool) { return relaytest.ReadEvent(s.r) }

// waitListeners waits until channel has n listeners on the relay.
func (a *app) waitListeners(channel string, n int) {
	a.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := a.mgr.Relay().Info(context.Background(), channel)
		if err == nil && info.Listeners == n {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("channel %s: want %d listeners, have %+v (%v)", channel, n, info, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var _ relay.Relay = (*countingRelay)(nil)

func newRequest() *http.Request { return httptest.NewRequest("GET", "/", nil) }
