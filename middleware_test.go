package sessionpush_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

func TestNewRequiresSessions(t *testing.T) {
	_, err := sessionpush.New(sessionpush.Config{})
	if !errors.Is(err, sessionpush.ErrNoSessionStore) {
		t.Fatalf("New without Sessions: %v, want ErrNoSessionStore", err)
	}
	_, err = sessionpush.New(sessionpush.Config{Sessions: sessions.NewCookieStore(make([]byte, 32)), ListenURL: "/sub"})
	if err == nil || !strings.Contains(err.Error(), "{channel}") {
		t.Fatalf("New with a ListenURL without {channel}: %v", err)
	}
}

func TestCurrentChannelWithoutMiddleware(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	if ch := sessionpush.CurrentChannel(r); ch != nil {
		t.Fatalf("CurrentChannel without the Middleware = %+v, want nil", ch)
	}
	if _, ok := sessionpush.FromContext(context.Background()); ok {
		t.Fatal("FromContext of an empty context reports a channel")
	}
}

func TestMiddlewareBindsChannel(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser()
	if got := b.get("/whoami"); got != "" {
		t.Fatalf("before sign-in CurrentChannel = %q, want nil", got)
	}
	b.login("alice")
	first := b.get("/whoami")
	user, id, _ := strings.Cut(first, " ")
	if user != "alice" || len(id) != 36 || id[14] != '4' {
		t.Fatalf("after sign-in CurrentChannel = %q, want alice and a UUIDv4", first)
	}
	if again := b.get("/whoami"); again != first {
		t.Fatalf("channel changed between requests: %q then %q", first, again)
	}
	for _, c := range b.c.Jar.Cookies(mustURL(a.srv.URL)) {
		if c.Name == "session" && c.Value == "" {
			t.Fatal("empty session cookie")
		}
	}
}

func TestMiddlewareSessionCookieFlags(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	resp := b.do("GET", "/whoami", nil)
	resp.Body.Close()
	// The channel was bound at the first request after sign-in: its cookie
	// carries the store's flags.
	for _, c := range resp.Cookies() {
		if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
			t.Fatalf("session cookie %s: HttpOnly=%v SameSite=%v", c.Name, c.HttpOnly, c.SameSite)
		}
	}
}

func TestMiddlewareUserChangeClosesOldChannel(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	old := b.subscribe()
	b.login("bob")
	user, id, _ := strings.Cut(b.get("/whoami"), " ")
	if user != "bob" || id == old.Channel || id == "" {
		t.Fatalf("after the user changed: %s %s, want bob on a new channel (old %s)", user, id, old.Channel)
	}
	if ok, err := a.mgr.Exists(context.Background(), old.Channel); ok || err != nil {
		t.Fatalf("old channel still open: %v %v", ok, err)
	}
	if _, err := a.relay.Info(context.Background(), old.Channel); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Fatalf("relay still has the old channel: %v", err)
	}
}

func TestMiddlewareBadCookieIsNoSession(t *testing.T) {
	a := newApp(t, nil)
	for name, cookie := range map[string]string{
		"tampered":  tamper(a, "alice"),
		"garbage":   "%%%not-base64",
		"other key": foreignCookie("alice"),
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", a.srv.URL+"/whoami", nil)
			req.AddCookie(&http.Cookie{Name: "session", Value: cookie})
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != 200 || body != "" {
				t.Fatalf("got %d %q, want 200 and no channel", resp.StatusCode, body)
			}
		})
	}
}

func TestSubscribe(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser()
	if code := b.status("POST", "/subscribe", nil); code != 401 {
		t.Fatalf("/subscribe before sign-in: %d, want 401", code)
	}
	b.login("alice")
	s1 := b.subscribe()
	if s1.URL != "/sub/"+s1.Channel || s1.Cursor != "0:0" {
		t.Fatalf("subscription %+v", s1)
	}
	b.push(`{"n":1}`)
	s2 := b.subscribe()
	if s2.Channel != s1.Channel || s2.Cursor == s1.Cursor {
		t.Fatalf("second /subscribe %+v after %+v: want the same channel, a newer cursor", s2, s1)
	}
	if got := b.get("/subscribe", "Accept", "text/plain"); got != s1.Channel {
		t.Fatalf("text/plain /subscribe = %q, want %q", got, s1.Channel)
	}
	if code := b.status("DELETE", "/subscribe", nil); code != 405 {
		t.Fatalf("DELETE /subscribe: %d", code)
	}
}

func TestSubscribeAfterRelayLostChannel(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	s1 := b.subscribe()
	if err := a.relay.Close(context.Background(), s1.Channel); err != nil { // the relay forgets it
		t.Fatal(err)
	}
	s2 := b.subscribe()
	if s2.Channel == s1.Channel {
		t.Fatal("/subscribe returned the channel that the relay lost")
	}
	if ok, _ := a.mgr.Exists(context.Background(), s2.Channel); !ok {
		t.Fatal("new channel not open")
	}
	if ok, _ := a.mgr.Exists(context.Background(), s1.Channel); ok {
		t.Fatal("lost channel still recorded")
	}
	b.push(`"x"`) // the session now pushes to the new channel
	if bodies, _, _ := b.walk(s2.URL, 1, "Last-Event-ID", s2.Cursor); bodies[0] != `"x"` {
		t.Fatalf("got %q", bodies)
	}
}

func TestConcurrentSubscribeOneChannel(t *testing.T) {
	store := sessionpush.NewMemoryStore()
	a := newApp(t, func(c *sessionpush.Config) { c.Store = store })
	b := a.browser().login("alice") // no request after sign-in yet: nothing bound
	const n = 12
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { ids[i] = b.get("/subscribe", "Accept", "text/plain") })
	}
	wg.Wait()
	if len(slices.Compact(slices.Sorted(slices.Values(ids)))) != 1 || len(ids[0]) != 36 {
		t.Fatalf("concurrent /subscribe gave several channels: %v", ids)
	}
	if store.Len() != 1 {
		t.Fatalf("store holds %d channels, want 1", store.Len())
	}
}

func TestListenLongPollAndEventSource(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	b.push(`{"n":1}`)
	b.push(`{"n":2}`)

	bodies, ims, inm := b.walk(sub.URL, 2, "Last-Event-ID", sub.Cursor)
	if !slices.Equal(bodies, []string{`{"n":1}`, `{"n":2}`}) {
		t.Fatalf("long-poll got %q", bodies)
	}
	done := make(chan string)
	go func() {
		_, body, _ := b.poll(sub.URL, "If-Modified-Since", ims, "If-None-Match", inm)
		done <- body
	}()
	a.waitListeners(sub.Channel, 1)
	b.push(`{"n":3}`)
	if got := <-done; got != `{"n":3}` {
		t.Fatalf("waiting long-poll got %q", got)
	}

	es, code := b.listen(sub.URL + "?last_event_id=" + sub.Cursor)
	if code != 200 {
		t.Fatalf("EventSource: %d", code)
	}
	for i := 1; i <= 3; i++ {
		ev, ok := es.next()
		if !ok || ev.Data != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("EventSource event %d: %+v %v", i, ev, ok)
		}
	}
	b.push(`{"n":4}`)
	if ev, _ := es.next(); ev.Data != `{"n":4}` {
		t.Fatalf("live EventSource event: %+v", ev)
	}
}

func TestNoLossOnReconnect(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	b.push(`1`)

	// Long-poll: take one, go away, come back with the last id.
	bodies, ims, inm := b.walk(sub.URL, 1, "Last-Event-ID", sub.Cursor)
	for _, v := range []string{`2`, `3`, `4`} {
		b.push(v)
	}
	rest, _, _ := b.walk(sub.URL, 3, "If-Modified-Since", ims, "If-None-Match", inm)
	if got := append(bodies, rest...); !slices.Equal(got, []string{`1`, `2`, `3`, `4`}) {
		t.Fatalf("long-poll across a reconnect got %q", got)
	}

	// EventSource: read two, drop the stream, push, resume by Last-Event-ID.
	es, _ := b.listen(sub.URL + "?last_event_id=" + sub.Cursor)
	e1, _ := es.next()
	e2, _ := es.next()
	es.resp.Body.Close()
	b.push(`5`)
	es2, _ := b.listen(sub.URL+"?last_event_id="+sub.Cursor, "Last-Event-ID", e2.ID)
	var got []string
	for range 3 {
		ev, ok := es2.next()
		if !ok {
			t.Fatal("stream ended")
		}
		got = append(got, ev.Data)
	}
	if e1.Data != `1` || e2.Data != `2` || !slices.Equal(got, []string{`3`, `4`, `5`}) {
		t.Fatalf("EventSource across a reconnect got %s %s then %q", e1.Data, e2.Data, got)
	}
}

func TestLateListenerWithCursor(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	b.subscribe()
	b.push(`"before"`)
	sub := b.subscribe() // cursor now points past "before"
	b.push(`"after-1"`)
	b.push(`"after-2"`)
	bodies, _, _ := b.walk(sub.URL, 2, "Last-Event-ID", sub.Cursor)
	if !slices.Equal(bodies, []string{`"after-1"`, `"after-2"`}) {
		t.Fatalf("late long-poll listener got %q", bodies)
	}
	es, _ := b.listen(sub.URL + "?last_event_id=" + sub.Cursor)
	e, _ := es.next()
	if e.Data != `"after-1"` {
		t.Fatalf("late EventSource listener got %+v first", e)
	}
}

func TestLogoutEndsListeners(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	es, _ := b.listen(sub.URL)
	lp := make(chan int)
	go func() {
		code, _, _ := b.poll(sub.URL, "Last-Event-ID", sub.Cursor)
		lp <- code
	}()
	a.waitListeners(sub.Channel, 2)
	if code := b.status("POST", "/logout", nil); code != 200 {
		t.Fatalf("logout: %d", code)
	}
	if code := <-lp; code != http.StatusGone {
		t.Fatalf("waiting long-poll after logout: %d, want 410", code)
	}
	if ev, ok := es.next(); ok {
		t.Fatalf("EventSource after logout: %+v, want the stream to end", ev)
	}
	if code := b.status("POST", "/subscribe", nil); code != 401 {
		t.Fatalf("/subscribe after logout: %d, want 401", code)
	}
	if ok, _ := a.mgr.Exists(context.Background(), sub.Channel); ok {
		t.Fatal("channel still open after logout")
	}
}

func TestOwnership(t *testing.T) {
	a := newApp(t, nil)
	alice := a.browser().login("alice")
	sub := alice.subscribe()
	mallory := a.browser().login("mallory")
	mallory.subscribe()
	alice2 := a.browser().login("alice") // same user, other session: still not its channel
	anon := a.browser()
	before := a.relay.served.Load()
	for name, tc := range map[string]struct {
		b      *browser
		cookie string
	}{
		"another user":         {b: mallory},
		"same user, other tab": {b: alice2},
		"no cookie":            {b: anon},
		"tampered cookie":      {b: anon, cookie: tamper(a, "alice")},
	} {
		t.Run(name, func(t *testing.T) {
			hdr := []string{}
			if tc.cookie != "" {
				hdr = []string{"Cookie", "session=" + tc.cookie}
			}
			if code, _, _ := tc.b.poll(sub.URL, hdr...); code != 403 {
				t.Fatalf("long-poll: %d, want 403", code)
			}
			if _, code := tc.b.listen(sub.URL, hdr...); code != 403 {
				t.Fatalf("EventSource: %d, want 403", code)
			}
		})
	}
	if n := a.relay.served.Load() - before; n != 0 {
		t.Fatalf("%d refused listeners reached the relay", n)
	}
}

func TestMalformedChannelNeverReachesRelay(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	before := a.relay.served.Load()
	for _, id := range []string{
		"nope",
		strings.ToUpper(sub.Channel),
		sub.Channel + "x",
		"00000000-0000-1000-8000-000000000000", // version 1
		"..%2F..%2Fetc",
		strings.Repeat("a", 2000),
	} {
		code, _, _ := b.poll("/sub/" + id)
		if code != 400 && code != 403 && code != 404 {
			t.Errorf("/sub/%.40s: %d, want 400 or 403", id, code)
		}
	}
	if n := a.relay.served.Load() - before; n != 0 {
		t.Fatalf("%d malformed ids reached the relay", n)
	}
}

// tamper returns a session cookie for user with its last byte changed.
func tamper(a *app, user string) string {
	v := cookieFor(a.sessions, user)
	last := v[len(v)-1]
	if last == 'A' {
		last = 'B'
	} else {
		last = 'A'
	}
	return v[:len(v)-1] + string(last)
}

// foreignCookie returns a well-formed session cookie signed with another key.
func foreignCookie(user string) string {
	key := make([]byte, 32)
	rand.Read(key)
	return cookieFor(sessions.NewCookieStore(key), user)
}

func cookieFor(store *sessions.CookieStore, user string) string {
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := store.New(r, "session")
	s.Values["user"] = user
	w := httptest.NewRecorder()
	store.Save(r, w, s)
	return w.Result().Cookies()[0].Value
}

// TestNewRelayConfig: the embedded relay is configured one way, through
// Config.Hub; beside Config.Relay, or with the settings that Config holds
// for every relay, it is an error.
func TestNewRelayConfig(t *testing.T) {
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	for name, cfg := range map[string]sessionpush.Config{
		"Hub beside Relay":   {Relay: hub.New(hub.Options{}), Hub: hub.Options{BufferLength: 5}},
		"Hub.MaxMessageSize": {Hub: hub.Options{MaxMessageSize: 1 << 10}},
		"Hub.OriginPatterns": {Hub: hub.Options{OriginPatterns: []string{"example.com"}}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Sessions = store
			if _, err := sessionpush.New(cfg); err == nil || !strings.Contains(err.Error(), "Config.Hub") {
				t.Errorf("New: %v, want an error naming Config.Hub", err)
			}
		})
	}
	t.Run("Hub applied", func(t *testing.T) {
		mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Hub: hub.Options{BufferLength: 2}, MaxMessageSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer mgr.Shutdown(context.Background())
		ctx := context.Background()
		const ch = "9b2f6c1e-4a7d-4e3b-8c5f-0d1e2f3a4b5c"
		if _, err := mgr.Relay().Open(ctx, ch); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := mgr.Relay().Publish(ctx, ch, sessionpush.Message{Body: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		if info, _ := mgr.Relay().Info(ctx, ch); info.Messages != 2 {
			t.Errorf("%d messages buffered, want Hub.BufferLength's 2", info.Messages)
		}
		big := sessionpush.Message{Body: make([]byte, 101)}
		if _, err := mgr.Relay().Publish(ctx, ch, big); !errors.Is(err, sessionpush.ErrMessageTooLarge) {
			t.Errorf("a 101-byte message on the embedded relay: %v, want ErrMessageTooLarge (Config.MaxMessageSize)", err)
		}
	})
}

// TestShutdownEndsEmbeddedRelay: whichever way the embedded relay was built
// (by New from Config.Hub, or by the application and passed as
// Config.Relay), Manager.Shutdown ends its listeners, and once the test's
// own server is closed no goroutine is left (goleak, in each case; the
// package's TestMain checks again at the end).
func TestShutdownEndsEmbeddedRelay(t *testing.T) {
	for name, r := range map[string]relay.Relay{
		"built by New": nil,
		"Config.Relay": hub.New(hub.Options{}),
	} {
		t.Run(name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			a := newApp(t, func(c *sessionpush.Config) { c.Relay = r })
			b := a.browser().login("alice")
			sub := b.subscribe()
			s, code := b.listen(sub.URL)
			if code != 200 {
				t.Fatalf("EventSource: %d", code)
			}
			if err := a.mgr.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			// The stream ends: its body reaches EOF after the relay's ":410" comment.
			rest, err := io.ReadAll(s.r)
			if err != nil || !strings.Contains(string(rest), ":410") {
				t.Errorf("stream after Shutdown: %q, %v; want it ended with :410", rest, err)
			}
			if _, err := a.mgr.Relay().Open(context.Background(), sub.Channel); !errors.Is(err, relay.ErrClosed) {
				t.Errorf("Open after Shutdown: %v, want relay.ErrClosed", err)
			}
			a.srv.Close()
			b.c.CloseIdleConnections()
			goleak.VerifyNone(t, ignore)
		})
	}
}

// TestNewRefusesUnsignedSessions: a cookie store without a hash key fails
// at New, naming the cause, rather than at the first sign-in.
func TestNewRefusesUnsignedSessions(t *testing.T) {
	for name, tc := range map[string]struct {
		store sessions.Store
		cause string
	}{
		"CookieStore without a key":     {sessions.NewCookieStore(nil), "hash key is not set"},
		"CookieStore with an empty key": {sessions.NewCookieStore([]byte{}), "hash key is not set"},
		"FilesystemStore without keys":  {sessions.NewFilesystemStore(t.TempDir()), "no codecs"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := sessionpush.New(sessionpush.Config{Sessions: tc.store})
			if !errors.Is(err, sessionpush.ErrSessionCodec) || !strings.Contains(err.Error(), tc.cause) {
				t.Errorf("New: %v, want ErrSessionCodec naming %q", err, tc.cause)
			}
		})
	}
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: sessions.NewCookieStore(securecookie.GenerateRandomKey(32))})
	if err != nil {
		t.Fatalf("New with a keyed CookieStore: %v", err)
	}
	mgr.Shutdown(context.Background())
}
