package sessionpush_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sessionpush/sessionpush"
)

// eventRecorder is a slog.Handler that keeps every record, at every level, with
// its attributes flattened to strings.
type eventRecorder struct {
	mu     sync.Mutex
	events []loggedEvent
	attrs  []slog.Attr // from WithAttrs
}

type loggedEvent struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func (l *eventRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *eventRecorder) Handle(_ context.Context, r slog.Record) error {
	e := loggedEvent{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range l.attrs {
		e.Attrs[a.Key] = a.Value.Resolve().String()
	}
	r.Attrs(func(a slog.Attr) bool {
		e.Attrs[a.Key] = a.Value.Resolve().String()
		return true
	})
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	return nil
}

// WithAttrs returns a handler that shares the record list.
func (l *eventRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &eventRecorderView{l: l, attrs: attrs}
}

func (l *eventRecorder) WithGroup(string) slog.Handler { return l }

type eventRecorderView struct {
	l     *eventRecorder
	attrs []slog.Attr
}

func (v *eventRecorderView) Enabled(context.Context, slog.Level) bool { return true }
func (v *eventRecorderView) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(v.attrs...)
	return v.l.Handle(ctx, r)
}
func (v *eventRecorderView) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &eventRecorderView{l: v.l, attrs: append(slices.Clip(v.attrs), attrs...)}
}
func (v *eventRecorderView) WithGroup(string) slog.Handler { return v }

// take returns the events logged since the last take.
func (l *eventRecorder) take() []loggedEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.events
	l.events = nil
	return e
}

// only returns the events with message msg.
func eventsNamed(events []loggedEvent, msg string) []loggedEvent {
	var out []loggedEvent
	for _, e := range events {
		if e.Msg == msg {
			out = append(out, e)
		}
	}
	return out
}

// one asserts that events hold exactly one loggedEvent with message msg, at
// level, whose attributes include want, and returns it.
func oneEvent(t *testing.T, events []loggedEvent, msg string, level slog.Level, want map[string]string) loggedEvent {
	t.Helper()
	got := eventsNamed(events, msg)
	if len(got) != 1 {
		t.Fatalf("want one %q loggedEvent, have %d in %+v", msg, len(got), events)
	}
	e := got[0]
	if e.Level != level {
		t.Errorf("%q: level %v, want %v", msg, e.Level, level)
	}
	for k, v := range want {
		if e.Attrs[k] != v {
			t.Errorf("%q: %s=%q, want %q (all: %v)", msg, k, e.Attrs[k], v, e.Attrs)
		}
	}
	return e
}

// noSecrets asserts that no loggedEvent carries any of the strings.
func noLeak(t *testing.T, events []loggedEvent, secrets ...string) {
	t.Helper()
	for _, e := range events {
		for k, v := range e.Attrs {
			for _, s := range secrets {
				if s != "" && (strings.Contains(v, s) || strings.Contains(e.Msg, s)) {
					t.Errorf("loggedEvent %q: %s=%q carries %q", e.Msg, k, v, s)
				}
			}
		}
	}
}

func (b *browser) sessionCookie() string {
	for _, c := range b.c.Jar.Cookies(mustURL(b.a.srv.URL)) {
		if c.Name == "session" {
			return c.Value
		}
	}
	b.t.Fatal("no session cookie")
	return ""
}

const (
	evOpened  = "sessionpush: channel opened"
	evClosed  = "sessionpush: channel closed"
	evRefused = "sessionpush: request refused"
)

// TestEventsChannelLife follows channels through their life over real HTTP
// and checks the events logged at each step: opened, closed with its
// cause, never a user name or a cookie.
func TestEventsChannelLife(t *testing.T) {
	log := &eventRecorder{}
	a := newApp(t, func(c *sessionpush.Config) {
		c.Logger = slog.New(log).With("app", "test")
		c.IdleTimeout = 1 // a nanosecond: anything without listeners is idle
	})
	ctx := context.Background()
	var cookies []string

	alice := a.browser().login("alice-secret-name")
	sub := alice.subscribe()
	cookies = append(cookies, alice.sessionCookie())
	ev := log.take()
	oneEvent(t, ev, evOpened, slog.LevelDebug, map[string]string{"channel": sub.Channel, "app": "test"})
	if len(eventsNamed(ev, evClosed)) != 0 {
		t.Errorf("closed events on open: %+v", ev)
	}
	noLeak(t, ev, "alice-secret-name", alice.sessionCookie())

	if again := alice.subscribe(); again.Channel != sub.Channel {
		t.Fatalf("channel changed: %s, %s", sub.Channel, again.Channel)
	}
	if ev := log.take(); len(eventsNamed(ev, evOpened)) != 0 {
		t.Errorf("a second /subscribe of an open channel logged an open: %+v", ev)
	}

	// Another user signs in on the same session: the old channel is
	// replaced.
	alice.login("bob-secret-name")
	cookies = append(cookies, alice.sessionCookie())
	ev = log.take()
	oneEvent(t, ev, evClosed, slog.LevelDebug, map[string]string{"channel": sub.Channel, "cause": "replaced"})
	bobSub := alice.subscribe()
	ev = append(ev, log.take()...)
	oneEvent(t, ev, evOpened, slog.LevelDebug, map[string]string{"channel": bobSub.Channel})
	noLeak(t, ev, "alice-secret-name", "bob-secret-name")

	// Logout.
	if code := alice.status("POST", "/logout", nil); code != 200 {
		t.Fatalf("logout: %d", code)
	}
	ev = log.take()
	oneEvent(t, ev, evClosed, slog.LevelDebug, map[string]string{"channel": bobSub.Channel, "cause": "logout"})

	// The user leaves the session without Manager.SignOut: the Middleware
	// closes the channel.
	erin := a.browser().login("erin")
	es := erin.subscribe()
	log.take()
	erin.login("")
	oneEvent(t, log.take(), evClosed, slog.LevelDebug, map[string]string{"channel": es.Channel, "cause": "logout"})

	// The application closes a channel.
	carol := a.browser().login("carol")
	cs := carol.subscribe()
	log.take()
	if err := a.mgr.CloseChannel(ctx, cs.Channel); err != nil {
		t.Fatal(err)
	}
	oneEvent(t, log.take(), evClosed, slog.LevelDebug, map[string]string{"channel": cs.Channel, "cause": "closed"})

	// The relay loses a channel; the next push finds out.
	dave := a.browser().login("dave")
	ds := dave.subscribe()
	log.take()
	if err := a.mgr.Relay().Close(ctx, ds.Channel); err != nil {
		t.Fatal(err)
	}
	if code := dave.status("POST", "/push", strings.NewReader(`"x"`)); code != http.StatusConflict {
		t.Fatalf("push to a lost channel: %d", code)
	}
	oneEvent(t, log.take(), evClosed, slog.LevelInfo, map[string]string{"channel": ds.Channel, "cause": "lost"})
	// And /subscribe opens it again.
	ds2 := dave.subscribe()
	oneEvent(t, log.take(), evOpened, slog.LevelDebug, map[string]string{"channel": ds2.Channel})

	// Idle expiry: nobody listens to dave's new channel.
	n, err := a.mgr.ExpireIdle(ctx)
	if err != nil || n != 1 {
		t.Fatalf("ExpireIdle: %d, %v", n, err)
	}
	oneEvent(t, log.take(), evClosed, slog.LevelInfo, map[string]string{"channel": ds2.Channel, "cause": "expired"})
	cookies = append(cookies, carol.sessionCookie(), dave.sessionCookie())
	noLeak(t, log.take(), cookies...)
}

// TestEventsRefusals makes each handler refuse requests over real HTTP and
// checks the refusal events: handler, reason, status, remote address, the
// level, and nothing of the cookie or the user.
func TestEventsRefusals(t *testing.T) {
	log := &eventRecorder{}
	a := newApp(t, func(c *sessionpush.Config) { c.Logger = slog.New(log) })
	alice := a.browser().login("alice-secret-name")
	as := alice.subscribe()
	bob := a.browser().login("bob")
	bob.subscribe()
	stranger := a.browser()
	log.take()

	type step struct {
		name    string
		do      func() int
		status  int
		handler string
		reason  string
		level   slog.Level
	}
	steps := []step{
		{"subscribe without session", func() int { return stranger.status("POST", "/subscribe", nil) },
			401, "subscribe", "not_signed_in", slog.LevelInfo},
		{"subscribe cross-origin", func() int {
			return alice.status("POST", "/subscribe", nil, "Sec-Fetch-Site", "cross-site")
		}, 403, "subscribe", "cross_origin", slog.LevelWarn},
		{"subscribe wrong method", func() int { return alice.status("PUT", "/subscribe", nil) },
			405, "subscribe", "method", slog.LevelInfo},
		{"listen to another's channel", func() int { return bob.status("GET", as.URL, nil) },
			403, "listen", "not_owner", slog.LevelInfo},
		{"listen without session", func() int { return stranger.status("GET", as.URL, nil) },
			403, "listen", "not_signed_in", slog.LevelInfo},
		{"listen to a malformed id", func() int { return alice.status("GET", "/sub/not-a-channel", nil) },
			400, "listen", "invalid_id", slog.LevelWarn},
		{"authorize another's channel", func() int {
			return bob.status("GET", "/authorize", nil, "X-Channel-Id", as.Channel)
		}, 403, "authorize", "not_owner", slog.LevelInfo},
		{"authorize a malformed id", func() int {
			return alice.status("GET", "/authorize", nil, "X-Channel-Id", "../../etc")
		}, 403, "authorize", "invalid_id", slog.LevelWarn},
		{"authorize without session", func() int {
			return stranger.status("GET", "/authorize", nil, "X-Channel-Id", as.Channel)
		}, 403, "authorize", "not_signed_in", slog.LevelInfo},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if code := s.do(); code != s.status {
				t.Fatalf("status %d, want %d", code, s.status)
			}
			ev := log.take()
			e := oneEvent(t, ev, evRefused, s.level, map[string]string{
				"handler": s.handler, "reason": s.reason, "status": fmt.Sprint(s.status),
			})
			if !strings.HasPrefix(e.Attrs["remote_addr"], "127.0.0.1:") {
				t.Errorf("remote_addr %q", e.Attrs["remote_addr"])
			}
			if e.Attrs["method"] == "" || e.Attrs["path"] == "" {
				t.Errorf("method or path missing: %v", e.Attrs)
			}
			noLeak(t, ev, "alice-secret-name", alice.sessionCookie(), bob.sessionCookie())
		})
	}

	// A 401 names the session it looked for and tells whether its cookie
	// came: no cookie at all, or a session cookie without a user (signed
	// out, or the application keeps its user under another key).
	t.Run("not signed in names the session", func(t *testing.T) {
		carol := a.browser().login("carol")
		if code := carol.status("POST", "/logout", nil); code != 200 {
			t.Fatalf("logout: %d", code)
		}
		log.take()
		for _, tc := range []struct {
			b      *browser
			cookie string
		}{{stranger, "false"}, {carol, "true"}} {
			if code := tc.b.status("POST", "/subscribe", nil); code != 401 {
				t.Fatalf("status %d, want 401", code)
			}
			oneEvent(t, log.take(), evRefused, slog.LevelInfo, map[string]string{
				"reason": "not_signed_in", "session": "session", "session_cookie": tc.cookie,
			})
		}
	})

	// A long path is clipped in the log.
	t.Run("long path", func(t *testing.T) {
		long := "/sub/" + strings.Repeat("x", 5000)
		if code := alice.status("GET", long, nil); code != 400 {
			t.Fatalf("status %d", code)
		}
		e := oneEvent(t, log.take(), evRefused, slog.LevelWarn, map[string]string{"reason": "invalid_id"})
		if p := e.Attrs["path"]; len(p) > 300 || !strings.HasPrefix(p, "/sub/xxx") {
			t.Errorf("path of %d bytes: %.40q", len(p), p)
		}
	})

	// The relay refuses a listener that passed the kit's checks: here the
	// relay lost the channel the store still holds.
	t.Run("relay refuses", func(t *testing.T) {
		if err := a.mgr.Relay().Close(context.Background(), as.Channel); err != nil {
			t.Fatal(err)
		}
		if code := alice.status("GET", as.URL, nil); code != 403 {
			t.Fatalf("status %d", code)
		}
		e := oneEvent(t, log.take(), evRefused, slog.LevelInfo, map[string]string{
			"handler": "listen", "reason": "relay_refused", "status": "403",
		})
		if _, ok := e.Attrs["err"]; ok {
			t.Errorf("relay refusal carries an err: %v", e.Attrs)
		}
	})
	// A successful listener logs no refusal.
	t.Run("accepted", func(t *testing.T) {
		bs := bob.subscribe()
		bob.push(`"hi"`)
		log.take()
		if code, body, _ := bob.poll(bs.URL, "Last-Event-ID", bs.Cursor); code != 200 || body != `"hi"` {
			t.Fatalf("long-poll: %d %q", code, body)
		}
		if ev := eventsNamed(log.take(), evRefused); len(ev) != 0 {
			t.Errorf("refusals logged for an accepted listener: %+v", ev)
		}
	})
}

// getFailStore is a MemoryStore whose Get fails when broken is set.
type getFailStore struct {
	*sessionpush.MemoryStore
	broken atomic.Bool
}

var errGetFail = errors.New("store down")

func (s *getFailStore) Get(ctx context.Context, id string) (sessionpush.Record, bool, error) {
	if s.broken.Load() {
		return sessionpush.Record{}, false, errGetFail
	}
	return s.MemoryStore.Get(ctx, id)
}

// TestEventsFailures: when the Store fails, the refusals are logged at
// Error level with the error, and the browser learns nothing of it.
func TestEventsFailures(t *testing.T) {
	log := &eventRecorder{}
	st := &getFailStore{MemoryStore: sessionpush.NewMemoryStore()}
	a := newApp(t, func(c *sessionpush.Config) { c.Logger = slog.New(log); c.Store = st })
	alice := a.browser().login("alice")
	sub := alice.subscribe()
	log.take()
	st.broken.Store(true)

	resp := alice.do("POST", "/subscribe", nil)
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "store down") {
		t.Fatalf("/subscribe: %d %q", resp.StatusCode, body)
	}
	e := oneEvent(t, log.take(), evRefused, slog.LevelError, map[string]string{"handler": "subscribe", "reason": "error", "status": "502"})
	if !strings.Contains(e.Attrs["err"], "store down") {
		t.Errorf("err %q", e.Attrs["err"])
	}

	if code := alice.status("GET", "/authorize", nil, "X-Channel-Id", sub.Channel); code != 403 {
		t.Fatalf("/authorize: %d", code)
	}
	e = oneEvent(t, log.take(), evRefused, slog.LevelError, map[string]string{"handler": "authorize", "reason": "error", "status": "403"})
	if !strings.Contains(e.Attrs["err"], "store down") {
		t.Errorf("err %q", e.Attrs["err"])
	}
	s := a.mgr.Stats()
	if s.Refused.Subscribe.Error != 1 || s.Refused.Authorize.Error != 1 || s.Refused.Authorize.NotOwner != 0 {
		t.Errorf("%+v", s.Refused)
	}
}
