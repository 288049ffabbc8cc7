package sessionpush_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

func TestSubscriberJunkPositionIs400(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	for name, hdr := range map[string][]string{
		"Last-Event-ID":             {"Last-Event-ID", "yesterday"},
		"If-None-Match":             {"If-Modified-Since", "Thu, 01 Jan 2026 00:00:00 GMT", "If-None-Match", "abc"},
		"If-Modified-Since":         {"If-Modified-Since", "not a date", "If-None-Match", "0"},
		"If-Modified-Since alone":   {"If-Modified-Since", "Thu, 01 Jan 2026 00:00:00 GMT"},
		"EventSource Last-Event-ID": {"Accept", "text/event-stream", "Last-Event-ID", "1:2:3"},
	} {
		t.Run(name, func(t *testing.T) {
			if code, _, _ := b.poll(sub.URL, hdr...); code != 400 {
				t.Fatalf("%v: %d, want 400", hdr, code)
			}
		})
	}
	if code, _, _ := b.poll(sub.URL + "?last_event_id=%00%ff"); code != 400 {
		t.Fatalf("junk ?last_event_id=: %d, want 400", code)
	}
}

// A server WriteTimeout must not cut a long-poll that waits longer, nor an
// EventSource stream, although the Middleware wraps the ResponseWriter.
func TestStreamsOutliveServerWriteTimeout(t *testing.T) {
	a := newApp(t, nil)
	a.srv.Close()
	a.srv = httptest.NewUnstartedServer(a.srv.Config.Handler)
	a.srv.Config.WriteTimeout = 300 * time.Millisecond
	a.srv.Start()
	b := a.browser().login("alice")
	sub := b.subscribe()

	es, code := b.listen(sub.URL)
	if code != 200 {
		t.Fatalf("EventSource: %d", code)
	}
	got := make(chan string, 1)
	go func() {
		_, body, _ := b.poll(sub.URL, "Last-Event-ID", sub.Cursor)
		got <- body
	}()
	a.waitListeners(sub.Channel, 2)
	// Outlast the server's WriteTimeout: wait until a request started after
	// both listeners has itself run longer than it.
	deadline := time.Now().Add(2 * a.srv.Config.WriteTimeout)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	b.push(`"late"`)
	if body := <-got; body != `"late"` {
		t.Fatalf("long-poll past WriteTimeout got %q", body)
	}
	if ev, ok := es.next(); !ok || ev.Data != `"late"` {
		t.Fatalf("EventSource past WriteTimeout got %+v, %v", ev, ok)
	}
}

func TestShutdownEndsListenersLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	key := make([]byte, 32)
	store := sessions.NewCookieStore(key)
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Logger: slog.New(slog.DiscardHandler), Hub: hub.Options{MaxListeners: -1}})
	if err != nil {
		t.Fatal(err)
	}
	a := &app{t: t, mgr: mgr, sessions: store}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		s.Save(r, w)
	})
	mux.Handle("/subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	a.srv = httptest.NewServer(mgr.Middleware(mux))
	b := a.browser().login("alice")
	sub := b.subscribe()

	const n = 40
	ended := make(chan error, 2*n)
	for i := range 2 * n {
		hdr := []string{"Last-Event-ID", sub.Cursor}
		if i%2 == 0 {
			hdr = append(hdr, "Accept", "text/event-stream")
		}
		go func() {
			resp := b.do("GET", sub.URL, nil, hdr...)
			_, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ended <- err
		}()
	}
	a.waitListeners(sub.Channel, 2*n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := mgr.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for range 2 * n {
		if err := <-ended; err != nil {
			t.Fatalf("a listener ended with %v", err)
		}
	}
	if _, err := mgr.Push(ctx, sub.Channel, sessionpush.Message{}); err == nil {
		t.Fatal("push after Shutdown succeeded")
	}
	a.srv.Close()
	b.c.CloseIdleConnections()
	waitGoroutines(t, before)
}

func TestListenHandlerWithForeignRelay(t *testing.T) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r, ch, err := kit.SignIn(httptest.NewRequest("GET", "/sub/x", nil), "alice")
	if err != nil {
		t.Fatal(err)
	}
	r.SetPathValue("channel", ch)
	w := httptest.NewRecorder()
	kit.Manager.ListenHandler().ServeHTTP(w, r)
	if w.Code != 404 || strings.Contains(w.Body.String(), "relay") {
		t.Fatalf("ListenHandler on a relay without listeners: %d %q", w.Code, w.Body)
	}
}

func TestErrorHandlerGetsStatusError(t *testing.T) {
	var got error
	kit, _ := sessionpushtest.NewKit(sessionpush.Config{
		Logger:       slog.New(slog.DiscardHandler),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) { got = err; w.WriteHeader(418) },
	})
	w := httptest.NewRecorder()
	kit.Manager.SubscribeHandler().ServeHTTP(w, httptest.NewRequest("POST", "/subscribe", nil))
	var se *sessionpush.StatusError
	if w.Code != 418 || !errors.As(got, &se) || se.Status != 401 || !errors.Is(got, sessionpush.ErrNotSignedIn) {
		t.Fatalf("ErrorHandler got %v (code %d)", got, w.Code)
	}
}

func TestDefaultErrorHandlerHidesErrorText(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	mallory := a.browser().login("mallory")
	code, body, _ := mallory.poll(sub.URL)
	if code != 403 || strings.TrimSpace(body) != "Forbidden" {
		t.Fatalf("refusal: %d %q, want 403 and the status text alone", code, body)
	}
}

func TestAuthorizeHandler(t *testing.T) {
	a := newApp(t, nil)
	alice := a.browser().login("alice")
	unopened := strings.Fields(alice.get("/whoami"))[1] // bound, not yet opened
	if code := alice.status("GET", "/authorize", nil, sessionpush.AuthorizeHeader, unopened); code != 403 {
		t.Fatalf("authorize before /subscribe: %d, want 403", code)
	}
	sub := alice.subscribe()
	mallory := a.browser().login("mallory")
	mallory.subscribe()
	cases := []struct {
		name string
		b    *browser
		id   string
		hdr  []string
		want int
	}{
		{"owner", alice, sub.Channel, nil, 204},
		{"another user", mallory, sub.Channel, nil, 403},
		{"no cookie", a.browser(), sub.Channel, nil, 403},
		{"tampered cookie", a.browser(), sub.Channel, []string{"Cookie", "session=" + tamper(a, "alice")}, 403},
		{"malformed id", alice, sub.Channel + "/..", nil, 403},
		{"no id", alice, "", nil, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := append([]string{sessionpush.AuthorizeHeader, tc.id}, tc.hdr...)
			if code := tc.b.status("GET", "/authorize?id="+sub.Channel, nil, hdr...); code != tc.want {
				t.Fatalf("authorize: %d, want %d", code, tc.want)
			}
		})
	}
	alice.status("POST", "/logout", nil)
	if code := alice.status("GET", "/authorize", nil, sessionpush.AuthorizeHeader, sub.Channel); code != 403 {
		t.Fatalf("authorize after logout: %d, want 403", code)
	}
}

// expiringStore removes a channel just before touching it, as another
// instance's ExpireIdle may between /subscribe's lookups.
type expiringStore struct {
	*sessionpush.MemoryStore
	expire string
}

func (s *expiringStore) Touch(ctx context.Context, id string, t time.Time) (bool, error) {
	if id == s.expire {
		s.Remove(ctx, id)
	}
	return s.MemoryStore.Touch(ctx, id, t)
}

func TestSubscribeWhenTheChannelExpiresMeanwhile(t *testing.T) {
	store := &expiringStore{MemoryStore: sessionpush.NewMemoryStore()}
	a := newApp(t, func(c *sessionpush.Config) { c.Store = store })
	b := a.browser().login("alice")
	s1 := b.subscribe()
	store.expire = s1.Channel
	s2 := b.subscribe()
	if s2.Channel == s1.Channel {
		t.Fatal("/subscribe returned a channel that expired meanwhile")
	}
	if _, ok, _ := store.Get(context.Background(), s2.Channel); !ok {
		t.Fatal("the new channel is not recorded")
	}
}

func TestSubscribeRefusesCrossOriginPosts(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	for name, tc := range map[string]struct {
		hdr  []string
		want int
	}{
		"cross-site":          {[]string{"Sec-Fetch-Site", "cross-site"}, 403},
		"other origin":        {[]string{"Origin", "http://evil.example"}, 403},
		"same-origin browser": {[]string{"Sec-Fetch-Site", "same-origin"}, 200},
		"no browser headers":  {nil, 200},
	} {
		t.Run(name, func(t *testing.T) {
			if code := b.status("POST", "/subscribe", nil, tc.hdr...); code != tc.want {
				t.Fatalf("POST /subscribe %v: %d, want %d", tc.hdr, code, tc.want)
			}
		})
	}
}
