package sessionpush_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
)

// The fuzz targets drive the kit's three browser-facing handlers with
// arbitrary requests, in process (so that header values a real client could
// not send, such as CR/LF, reach them too), on a fixture made afresh for
// every input: alice and bob, each with an open channel, and the broadcast
// channel. Every input chooses
//
//   - the channel ID asked for (idSel): the raw fuzzed string, alice's,
//     bob's, the broadcast channel, a channel never opened, or alice's
//     followed by the fuzzed string;
//   - the session (mode): none, the raw fuzzed Cookie header, alice's or
//     bob's real cookie, or a validly signed session that is wrong in some
//     way (another user claiming the channel asked for, a user with
//     another user's binding, a user without a channel, alice's own values
//     signed with a foreign key, alice's user and binding with the channel
//     asked for);
//   - whether the Middleware runs in front.
//
// Invariants: no panic; a status from the handler's set; 2xx exactly when
// the session may listen to that channel (owner of the open channel, or
// signed in for the broadcast channel); a refused request never reaches the
// relay; no header value carries CR or LF or echoes fuzzed input; a refusal
// is the bare status text (no internal error text); a channel refused on
// the subscriber and authorize handlers gets the very answer, and the same
// silence of the relay, that a channel never opened gets.

const neverOpened = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"

type fuzzHandler int

const (
	fuzzSubscribe fuzzHandler = iota
	fuzzListen
	fuzzAuthorize
)

// fuzzInput is one fuzzed request.
type fuzzInput struct {
	method, raw, query, origin, site, accept, lastEventID, inm, ims, ctype, upgrade, cookie string
	idSel, mode                                                                             uint8
	middleware                                                                              bool
}

func (in fuzzInput) strings() []string {
	return []string{in.method, in.raw, in.query, in.origin, in.site, in.accept, in.lastEventID, in.inm, in.ims, in.ctype, in.upgrade, in.cookie}
}

// fuzzFixture is a Manager on a callRecorder with the broadcast channel, and
// alice and bob signed in with their channels open.
type fuzzFixture struct {
	mgr          *sessionpush.Manager
	sessions     *sessions.CookieStore
	store        *sessionpush.MemoryStore
	relay        *callRecorder
	alice, bob   string // channel IDs
	aliceCookie  string // session cookie values
	bobCookie    string
	openedBy     map[string]string
	broadcast    string
	foreignStore *sessions.CookieStore
}

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	tb.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	fkey := make([]byte, 32)
	rand.Read(fkey)
	f := &fuzzFixture{
		sessions:     sessions.NewCookieStore(key),
		foreignStore: sessions.NewCookieStore(fkey),
		store:        sessionpush.NewMemoryStore(),
		relay:        newCallRecorder(),
		broadcast:    sessionpush.SuggestedBroadcastChannel,
	}
	f.sessions.Options.HttpOnly = true
	f.sessions.Options.SameSite = http.SameSiteLaxMode
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions: f.sessions, Relay: f.relay, Store: f.store,
		BroadcastChannel: f.broadcast, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	f.mgr = mgr
	f.alice, f.aliceCookie = f.signIn(tb, "alice")
	f.bob, f.bobCookie = f.signIn(tb, "bob")
	f.openedBy = map[string]string{f.alice: "alice", f.bob: "bob"}
	f.relay.Reset()
	return f
}

// cookieWith returns a session cookie value of store with vals.
func cookieWith(tb testing.TB, store *sessions.CookieStore, vals map[string]any) string {
	tb.Helper()
	r := httptest.NewRequest("GET", "/", nil)
	s, _ := store.New(r, "session")
	for k, v := range vals {
		s.Values[k] = v
	}
	w := httptest.NewRecorder()
	if err := store.Save(r, w, s); err != nil {
		tb.Fatal(err)
	}
	return w.Result().Cookies()[0].Value
}

// signIn opens user's channel through SubscribeHandler and returns it with
// the session cookie that holds it.
func (f *fuzzFixture) signIn(tb testing.TB, user string) (channel, cookie string) {
	tb.Helper()
	r := httptest.NewRequest("POST", "/subscribe", nil)
	r.Header.Set("Accept", "text/plain")
	r.AddCookie(&http.Cookie{Name: "session", Value: cookieWith(tb, f.sessions, map[string]any{"user": user})})
	w := httptest.NewRecorder()
	f.mgr.SubscribeHandler().ServeHTTP(w, r)
	if w.Code != 200 || len(w.Result().Cookies()) != 1 {
		tb.Fatalf("sign in %s: %d %q", user, w.Code, w.Body)
	}
	return w.Body.String(), w.Result().Cookies()[0].Value
}

// session is what the server would read from the request's cookie.
type session struct {
	user, owner, channel string
}

// pick returns the channel ID the input asks for, and the Cookie header
// and the session it carries.
func (f *fuzzFixture) pick(tb testing.TB, in fuzzInput) (id, cookie string, s session) {
	switch in.idSel % 6 {
	case 0:
		id = in.raw
	case 1:
		id = f.alice
	case 2:
		id = f.bob
	case 3:
		id = f.broadcast
	case 4:
		id = neverOpened
	case 5:
		id = f.alice + in.raw
	}
	signed := func(st *sessions.CookieStore, user, owner, channel string) string {
		vals := map[string]any{}
		if user != "" {
			vals["user"] = user
		}
		if owner != "" {
			vals[sessionpush.SessionKeyOwner] = owner
		}
		if channel != "" {
			vals[sessionpush.SessionKeyChannel] = channel
		}
		return "session=" + cookieWith(tb, st, vals)
	}
	// A cookie holds 4 KiB: a session claims at most 1 KiB of the ID.
	claim := id
	if len(claim) > 1024 {
		claim = claim[:1024]
	}
	switch in.mode % 9 {
	case 0: // no cookie
	case 1:
		cookie = in.cookie
	case 2:
		cookie, s = "session="+f.aliceCookie, session{"alice", "alice", f.alice}
	case 3:
		cookie, s = "session="+f.bobCookie, session{"bob", "bob", f.bob}
	case 4: // another user claims the channel asked for
		s = session{"mallory", "mallory", claim}
		cookie = signed(f.sessions, s.user, s.owner, s.channel)
	case 5: // alice with bob's binding
		s = session{"alice", "bob", claim}
		cookie = signed(f.sessions, s.user, s.owner, s.channel)
	case 6: // signed in, no channel
		s = session{"alice", "", ""}
		cookie = signed(f.sessions, s.user, "", "")
	case 7: // alice's values, another key: no session
		cookie = signed(f.foreignStore, "alice", "alice", f.alice)
	case 8: // alice with her own user and the channel asked for
		s = session{"alice", "alice", claim}
		cookie = signed(f.sessions, s.user, s.owner, s.channel)
	}
	if in.mode%9 >= 2 && in.cookie != "" && in.mode >= 128 {
		cookie += "; " + in.cookie // junk after a real session cookie
	}
	return id, cookie, s
}

// mayListen tells whether session s may listen to id.
func (f *fuzzFixture) mayListen(s session, id string) bool {
	if s.user == "" {
		return false
	}
	if id == f.broadcast {
		return true
	}
	return s.owner == s.user && s.channel == id && f.openedBy[id] == s.user
}

// knownHeaderText are header values the handlers write; a fuzzed string
// inside one of them is no echo.
var knownHeaderText = []string{
	"no-store", "Cookie", "Accept", "text/plain; charset=utf-8", "application/json",
	"text/plain; charset=utf-8", "nosniff", "GET, POST", "Path=/; Expires=", "HttpOnly; SameSite=Lax",
}

func echoes(s, in string) bool {
	if len(in) < 8 {
		return false
	}
	for _, k := range knownHeaderText {
		if strings.Contains(k, in) {
			return false
		}
	}
	return strings.Contains(s, in)
}

func runFuzzInput(t *testing.T, which fuzzHandler, in fuzzInput) {
	f := newFuzzFixture(t)
	id, cookie, s := f.pick(t, in)
	method := in.method
	if method == "" {
		method = "GET" // what net/http's server hands a handler
	}
	// serve sends the request for channel id and returns the answer and
	// the ID that the handler takes from it.
	serve := func(id string) (w *httptest.ResponseRecorder, effective string) {
		reqPath := "/subscribe"
		switch which {
		case fuzzSubscribe:
			if in.idSel&0x40 != 0 {
				reqPath += "/" + in.raw // the handler takes nothing from its path
			}
		case fuzzListen:
			reqPath = "/sub/" + id
		case fuzzAuthorize:
			reqPath = "/authorize"
		}
		r := &http.Request{
			Method:     method,
			URL:        &url.URL{Path: reqPath, RawQuery: in.query},
			Proto:      "HTTP/1.1",
			ProtoMajor: 1, ProtoMinor: 1,
			Header:     http.Header{},
			Host:       "app.test",
			RemoteAddr: "192.0.2.1:1234",
			RequestURI: reqPath,
			Body:       http.NoBody,
		}
		r = r.WithContext(context.Background())
		set := func(k, v string) {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		set("Origin", in.origin)
		set("Sec-Fetch-Site", in.site)
		set("Accept", in.accept)
		set("Last-Event-ID", in.lastEventID)
		set("If-None-Match", in.inm)
		set("If-Modified-Since", in.ims)
		set("Content-Type", in.ctype)
		set("Upgrade", in.upgrade)
		set("Cookie", cookie)
		if which == fuzzAuthorize {
			set(sessionpush.AuthorizeHeader, id)
		} else {
			set(sessionpush.AuthorizeHeader, f.alice) // never trusted elsewhere
		}
		effective = id
		if which == fuzzListen {
			if in.idSel&0x80 != 0 {
				r.SetPathValue("channel", id) // as "GET /sub/{channel}" routes it
			} else {
				effective = path.Base(r.URL.Path)
			}
		}
		var h http.Handler
		switch which {
		case fuzzSubscribe:
			h = f.mgr.SubscribeHandler()
		case fuzzListen:
			h = f.mgr.ListenHandler()
		case fuzzAuthorize:
			h = f.mgr.AuthorizeHandler()
		}
		if in.middleware {
			h = f.mgr.Middleware(h)
		}
		w = httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w, effective
	}
	w, effective := serve(id)
	code, body := w.Code, w.Body.String()
	calls := f.relay.Calls()
	desc := func() string {
		return strings.Join([]string{"method " + method, "id " + id, "cookie " + cookie, "session " + s.user + "/" + s.owner + "/" + s.channel}, "; ")
	}

	for k, vs := range w.Header() {
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				t.Fatalf("header %s: %q has CR/LF (%s)", k, v, desc())
			}
			if k == "Set-Cookie" {
				continue
			}
			for _, fz := range in.strings() {
				if echoes(v, fz) {
					t.Fatalf("header %s: %q echoes the input %q (%s)", k, v, fz, desc())
				}
			}
		}
	}
	if code >= 300 {
		if body != http.StatusText(code)+"\n" {
			t.Fatalf("refusal %d with body %q; want the status text alone (%s)", code, body, desc())
		}
		for _, c := range calls {
			if c.Op != "Close" { // the Middleware closes a binding the session leaves
				t.Fatalf("refused request (%d) reached the relay: %v (%s)", code, calls, desc())
			}
		}
	}

	switch which {
	case fuzzSubscribe:
		switch code {
		case 200, 401, 403, 405:
		default:
			t.Fatalf("/subscribe: status %d (%s)", code, desc())
		}
		wantOK := s.user != "" && (method == "GET" || method == "POST") && (method == "GET" || in.site == "" && in.origin == "")
		if code == 200 {
			if s.user == "" || method != "GET" && method != "POST" {
				t.Fatalf("/subscribe answered 200 (%s)", desc())
			}
			if method == "POST" && in.site != "" && in.site != "same-origin" && in.site != "none" {
				t.Fatalf("/subscribe: a cross-site POST got 200 (%s)", desc())
			}
			ch := strings.TrimSpace(body)
			if ct := w.Header().Get("Content-Type"); ct == "application/json" {
				var sub sessionpush.Subscription
				if err := json.Unmarshal([]byte(body), &sub); err != nil {
					t.Fatalf("/subscribe JSON %q: %v", body, err)
				}
				ch = sub.Channel
			} else if ct != "text/plain; charset=utf-8" {
				t.Fatalf("/subscribe Content-Type %q", ct)
			}
			rec, ok, err := f.store.Get(context.Background(), ch)
			if err != nil || !ok || rec.User != s.user {
				t.Fatalf("/subscribe gave %s channel %q, stored as %+v %v %v (%s)", s.user, ch, rec, ok, err, desc())
			}
			if by := f.openedBy[ch]; by != "" && by != s.user {
				t.Fatalf("/subscribe gave %s the channel of %s (%s)", s.user, by, desc())
			}
		} else if wantOK {
			t.Fatalf("/subscribe refused (%d) a signed-in same-origin request (%s)", code, desc())
		}
	case fuzzListen:
		want := f.mayListen(s, effective)
		switch {
		case code == 200:
			if !want {
				t.Fatalf("listener let in to %q (%s)", effective, desc())
			}
			if n := countOps(calls, "ServeListener"); n != 1 || body != "served\n" {
				t.Fatalf("listener let in: relay calls %v, body %q", calls, body)
			}
		case code == 400 || code == 403:
			if want {
				t.Fatalf("listener of %q refused with %d (%s)", effective, code, desc())
			}
		default:
			t.Fatalf("subscriber: status %d (%s)", code, desc())
		}
	case fuzzAuthorize:
		want := f.mayListen(s, id)
		switch {
		case code == 204:
			if !want {
				t.Fatalf("authorize let in %q (%s)", id, desc())
			}
			if body != "" {
				t.Fatalf("204 with body %q", body)
			}
		case code == 403:
			if want {
				t.Fatalf("authorize refused %q (%s)", id, desc())
			}
		default:
			t.Fatalf("authorize: status %d (%s)", code, desc())
		}
		if n := countOps(calls, "Open", "Info", "Publish", "ServeListener"); n != 0 {
			t.Fatalf("authorize called the relay: %v", calls)
		}
	}

	// No enumeration: a channel refused to this session gets the answer
	// that a channel never opened gets, with the same request otherwise.
	if which != fuzzSubscribe && code == http.StatusForbidden && uuidV4(effective) &&
		effective != f.broadcast && effective != otherNeverOpened {
		other := otherNeverOpened
		if which == fuzzListen && in.idSel&0x80 == 0 {
			// The same path with its last element replaced.
			other = strings.TrimSuffix(id, effective) + otherNeverOpened
		}
		f.relay.Reset()
		w2, eff2 := serve(other)
		if eff2 != otherNeverOpened {
			return // a path whose last element is not at its end ("/sub/<id>/")
		}
		h1, h2 := w.Header().Clone(), w2.Header().Clone()
		h1.Del("Set-Cookie") // a binding the Middleware made: a random ID
		h2.Del("Set-Cookie")
		if w2.Code != code || w2.Body.String() != body || !maps.EqualFunc(h1, h2, slices.Equal) {
			t.Fatalf("%s refused: %d %v %q; a channel never opened: %d %v %q (%s)", effective, code, h1, body, w2.Code, h2, w2.Body, desc())
		}
		if n := countOps(f.relay.Calls(), "Open", "Info", "Publish", "ServeListener"); n != 0 {
			t.Fatalf("a channel never opened: the relay was called: %v", f.relay.Calls())
		}
	}
}

// otherNeverOpened is the channel never opened that a refusal is compared
// with.
const otherNeverOpened = "0a9b8c7d-6e5f-4a3b-9c1d-2e3f4a5b6c7d"

func countOps(calls []relayCall, ops ...string) int {
	n := 0
	for _, c := range calls {
		for _, op := range ops {
			if c.Op == op {
				n++
			}
		}
	}
	return n
}

// addFuzzSeeds adds the in-code seeds shared by the three targets; the
// nasty ones live in testdata/fuzz/<target>/.
func addFuzzSeeds(f *testing.F) {
	for _, in := range []fuzzInput{
		{method: "POST", idSel: 1, mode: 2},
		{method: "GET", idSel: 2, mode: 2, middleware: true},
		{method: "GET", idSel: 3, mode: 6, middleware: true},
		{method: "POST", site: "cross-site", idSel: 1, mode: 2},
		{method: "GET", raw: "../../pub/x", idSel: 0, mode: 4},
		{method: "GET", accept: "text/event-stream", idSel: 4, mode: 4, middleware: true},
		{method: "GET", upgrade: "websocket", idSel: 0x81, mode: 8},
	} {
		f.Add(in.method, in.raw, in.query, in.origin, in.site, in.accept, in.lastEventID, in.inm, in.ims, in.ctype, in.upgrade, in.cookie, in.idSel, in.mode, in.middleware)
	}
}

func fuzzWith(f *testing.F, which fuzzHandler) {
	addFuzzSeeds(f)
	f.Fuzz(func(t *testing.T, method, raw, query, origin, site, accept, lastEventID, inm, ims, ctype, upgrade, cookie string, idSel, mode uint8, middleware bool) {
		runFuzzInput(t, which, fuzzInput{method, raw, query, origin, site, accept, lastEventID, inm, ims, ctype, upgrade, cookie, idSel, mode, middleware})
	})
}

// FuzzSubscribeHandler fuzzes /subscribe.
func FuzzSubscribeHandler(f *testing.F) { fuzzWith(f, fuzzSubscribe) }

// FuzzListenHandler fuzzes the embedded relay's listening endpoint.
func FuzzListenHandler(f *testing.F) { fuzzWith(f, fuzzListen) }

// FuzzAuthorizeHandler fuzzes the endpoint of nchan_authorize_request.
func FuzzAuthorizeHandler(f *testing.F) { fuzzWith(f, fuzzAuthorize) }
