package sessionpush_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
)

// newRecordedApp is the app of helpers_test.go (its routes and browsers)
// on a callRecorder instead of the embedded relay, with the broadcast
// channel: every request that reaches the relay is on record, and a
// listener let in gets 200 "served" at once.
func newRecordedApp(t *testing.T) (*app, *callRecorder) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	store := sessions.NewCookieStore(key)
	store.Options.HttpOnly = true
	store.Options.SameSite = http.SameSiteLaxMode
	rec := newCallRecorder()
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions: store, Relay: rec, Logger: slog.New(slog.DiscardHandler),
		BroadcastChannel: sessionpush.SuggestedBroadcastChannel,
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		if err := s.Save(r, w); err != nil {
			http.Error(w, "save", 500)
		}
	})
	mux.Handle("/subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.Handle("GET /authorize", mgr.AuthorizeHandler())
	srv := httptest.NewServer(mgr.Middleware(mux))
	t.Cleanup(srv.Close)
	return &app{t: t, mgr: mgr, sessions: store, srv: srv}, rec
}

// answer is a response as a listener sees it: status, headers but Date,
// and body.
type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) answer(method, path string, hdr ...string) answer {
	b.t.Helper()
	resp := b.do(method, path, nil, hdr...)
	body := readAll(b.t, resp)
	h := resp.Header.Clone()
	h.Del("Date")
	return answer{resp.StatusCode, h, body}
}

func (a answer) String() string {
	return fmt.Sprintf("%d %v %q", a.status, a.header, a.body)
}

func (a answer) equal(b answer) bool {
	return a.status == b.status && a.body == b.body &&
		maps.EqualFunc(a.header, b.header, func(x, y []string) bool { return slices.Equal(x, y) })
}

// The three transports of a listener, as their requests begin.
var transports = map[string][]string{
	"long-poll":   {"If-Modified-Since", "Thu, 01 Jan 2026 00:00:00 GMT", "If-None-Match", "0"},
	"EventSource": {"Accept", "text/event-stream", "Last-Event-ID", "1795742138:1"},
	"WebSocket": {"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13",
		"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol", "ws+meta.nchan"},
}

// TestNoChannelEnumeration: whoever asks for a channel that is not theirs
// gets, on every transport and from /authorize, the very answer (status,
// headers but Date, body) that a channel never opened gets, and the relay
// hears of neither, so that neither the answer nor the relay's work tells
// whether a channel ID is open.
func TestNoChannelEnumeration(t *testing.T) {
	a, rec := newRecordedApp(t)
	alice := a.browser().login("alice")
	sub := alice.subscribe()
	mallory := a.browser().login("mallory")
	mallory.subscribe()
	anon := a.browser()
	never := uuid.NewString()
	rec.Reset()

	for who, b := range map[string]*browser{"another user": mallory, "no session": anon} {
		for name, hdr := range transports {
			foreign := b.answer("GET", "/sub/"+sub.Channel, hdr...)
			unknown := b.answer("GET", "/sub/"+never, hdr...)
			if foreign.status != http.StatusForbidden || !foreign.equal(unknown) {
				t.Errorf("%s, %s: alice's channel: %v\nnever opened: %v\nwant the same 403", who, name, foreign, unknown)
			}
		}
		foreign := b.answer("GET", "/authorize", sessionpush.AuthorizeHeader, sub.Channel)
		unknown := b.answer("GET", "/authorize", sessionpush.AuthorizeHeader, never)
		if foreign.status != http.StatusForbidden || !foreign.equal(unknown) {
			t.Errorf("%s, /authorize: alice's channel: %v\nnever opened: %v\nwant the same 403", who, foreign, unknown)
		}
	}
	// The broadcast channel to a signed-out request: the same refusal.
	for name, hdr := range transports {
		bc := anon.answer("GET", "/sub/"+sessionpush.SuggestedBroadcastChannel, hdr...)
		unknown := anon.answer("GET", "/sub/"+never, hdr...)
		if bc.status != http.StatusForbidden || !bc.equal(unknown) {
			t.Errorf("signed out, %s: broadcast channel: %v\nnever opened: %v", name, bc, unknown)
		}
	}
	if calls := rec.Calls(); len(calls) != 0 {
		t.Fatalf("refused listeners reached the relay: %v", calls)
	}

	// The recorder does see a listener let in.
	for name, hdr := range transports {
		if got := alice.answer("GET", sub.URL, hdr...); got.status != 200 || got.body != "served\n" {
			t.Errorf("alice, %s: %v; want her listener served", name, got)
		}
	}
	if got := alice.answer("GET", "/authorize", sessionpush.AuthorizeHeader, sub.Channel); got.status != http.StatusNoContent {
		t.Errorf("alice, /authorize: %v; want 204", got)
	}
	if n := countOps(rec.Calls(), "ServeListener"); n != len(transports) {
		t.Errorf("relay calls %v; want %d listeners of alice's", rec.Calls(), len(transports))
	}
}

// noRedirect is a client that follows no redirect and keeps no cookie.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// TestInjectionThroughIDs sends channel IDs built to inject headers, walk
// paths or overflow: in the listener's path, in X-Channel-Id, and as the
// channel a validly signed session claims. Each is refused with 400 or 403
// (404 or a redirect from the mux for paths it does not route), nothing of
// it reaches the relay, and no answer carries it in a header.
func TestInjectionThroughIDs(t *testing.T) {
	a, rec := newRecordedApp(t)
	alice := a.browser().login("alice")
	sub := alice.subscribe()
	rec.Reset()
	cookie := ""
	for _, c := range alice.c.Jar.Cookies(mustURL(a.srv.URL)) {
		cookie = c.Name + "=" + c.Value
	}
	checkHeaders := func(what string, h http.Header) {
		t.Helper()
		for k, vs := range h {
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n") || strings.Contains(v, "injected") || k != "Location" && strings.Contains(v, "evil") {
					t.Errorf("%s: header %s: %q", what, k, v)
				}
			}
		}
		if h.Get("X-Injected") != "" || len(h.Values("Set-Cookie")) > 0 {
			t.Errorf("%s: injected headers %v", what, h)
		}
	}
	long := strings.Repeat("a", 16<<10)
	for _, p := range []string{
		sub.Channel + "%0d%0aSet-Cookie:%20injected=1",
		sub.Channel + "%0aX-Injected:%201",
		"%0d%0aLocation:%20http://evil.example/",
		sub.Channel + "%00",
		"..%2f..%2fpub%2f" + sub.Channel,
		"..%2F" + sub.Channel,
		"../" + sub.Channel,
		sub.Channel + "/..",
		sub.Channel + "%2f",
		long,
		sub.Channel + long,
		url.PathEscape("ｂ0adca57-0000-4000-8000-000000000000"),    // full-width b
		url.PathEscape(sub.Channel[:14] + "４" + sub.Channel[15:]), // full-width 4 as the version digit, which every channel ID has
		url.PathEscape(sub.Channel[:8] + "‐" + sub.Channel[9:]),   // U+2010 hyphen
		strings.ToUpper(sub.Channel),
		url.PathEscape(sub.Channel + "\u200b"), // zero-width space
	} {
		req, err := http.NewRequest("GET", a.srv.URL+"/sub/"+p, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Cookie", cookie)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case 400, 403, 404:
		case 301, 307, 308: // the mux cleans the path; the redirect goes to the app itself
			if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") {
				t.Errorf("/sub/%.60s: redirect to %q", p, loc)
			}
		default:
			t.Errorf("/sub/%.60s: %d; want 400 or 403", p, resp.StatusCode)
		}
		checkHeaders("/sub/"+p[:min(len(p), 60)], resp.Header)
	}

	for _, id := range []string{
		sub.Channel + "%0d%0a",
		sub.Channel + "\u2028",
		"../" + sub.Channel,
		sub.Channel + "/..",
		sub.Channel + ",", // an Nchan multiplexed subscription
		sub.Channel + " " + sub.Channel,
		strings.ToUpper(sub.Channel),
		long,
		"ｂ0adca57-0000-4000-8000-000000000000",
	} {
		got := alice.answer("GET", "/authorize", sessionpush.AuthorizeHeader, id)
		if got.status != http.StatusForbidden || got.body != "Forbidden\n" {
			t.Errorf("/authorize %.60q: %v; want 403 Forbidden", id, got)
		}
		checkHeaders("/authorize", got.header)
	}

	// Raw bytes no client library sends: a bare CR or LF inside a header
	// value or the request line. net/http refuses them before the kit.
	for _, raw := range []string{
		"GET /authorize HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + "\r\nX-Channel-Id: " + sub.Channel + "\rX-Injected: 1\r\n\r\n",
		"GET /sub/" + sub.Channel + "\r HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + "\r\n\r\n",
		"GET /sub/" + sub.Channel + "\x00 HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + "\r\n\r\n",
		"GET /authorize HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + "\r\nX-Channel-Id: x\r\n " + sub.Channel + "\r\n\r\n", // obs-fold
	} {
		status, h := rawExchange(t, a.srv.Listener.Addr().String(), strings.NewReader(raw))
		if status != http.StatusBadRequest && status != http.StatusForbidden {
			t.Errorf("raw %q: %d; want 400", raw, status)
		}
		checkHeaders(fmt.Sprintf("raw %.40q", raw), h)
	}

	// A validly signed session that claims such a channel gets a new one
	// from /subscribe; the relay only ever hears of well-formed IDs.
	for _, claim := range []string{
		"x\r\nSet-Cookie: injected=1",
		"../pub/" + sub.Channel,
		strings.ToUpper(uuid.NewString()),
		long[:1024],
	} {
		c := cookieWith(t, a.sessions, map[string]any{"user": "mallory", sessionpush.SessionKeyOwner: "mallory", sessionpush.SessionKeyChannel: claim})
		b := a.browser()
		b.c.Jar.SetCookies(mustURL(a.srv.URL), []*http.Cookie{{Name: "session", Value: c}})
		s := b.subscribe()
		if !uuidV4(s.Channel) || s.URL != "/sub/"+s.Channel {
			t.Errorf("session claiming %.40q: subscription %+v", claim, s)
		}
	}
	for _, c := range rec.Calls() {
		if c.Op != "Open" || !uuidV4(c.Channel) {
			t.Errorf("relay call %v", c)
		}
	}
}

// uuidV4 is the kit's channel ID syntax, restated.
func uuidV4(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s && u.Version() == 4 && u.Variant() == uuid.RFC4122
}

// rawExchange writes the request that body yields on a connection of its
// own, concurrently with reading the answer's head, and returns the
// answer's status and header. The writer stops when the server closes the
// connection or body ends.
func rawExchange(t *testing.T, addr string, body io.Reader) (int, http.Header) {
	t.Helper()
	status, h, _ := rawExchangeCount(t, addr, body)
	return status, h
}

func rawExchangeCount(t *testing.T, addr string, body io.Reader) (int, http.Header, int64) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type wrote struct {
		n   int64
		err error
	}
	done := make(chan wrote, 1)
	go func() {
		n, err := io.Copy(conn, body)
		done <- wrote{n, err}
	}()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	resp.Body.Close()
	// The server closes a connection whose request it did not read: the
	// writer fails then. Close ours too, in case it did read it all.
	conn.Close()
	select {
	case w := <-done:
		return resp.StatusCode, resp.Header, w.n
	case <-time.After(20 * time.Second):
		t.Fatal("the request's writer never stopped")
	}
	return 0, nil, 0
}

// repeatReader yields left copies of byte b.
type repeatReader struct {
	b    byte
	left int64
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > r.left {
		n = r.left
	}
	for i := range p[:n] {
		p[i] = r.b
	}
	r.left -= n
	return int(n), nil
}

// TestRequestSizeLimits: a huge body on /subscribe is not read (the answer
// comes, and the server drops the connection instead of taking the body),
// and huge headers get 431 from net/http before any handler, on every
// route of the kit; the heap does not grow with either.
func TestRequestSizeLimits(t *testing.T) {
	a, rec := newRecordedApp(t)
	alice := a.browser().login("alice")
	sub := alice.subscribe()
	var cookie string
	for _, c := range alice.c.Jar.Cookies(mustURL(a.srv.URL)) {
		cookie = c.Name + "=" + c.Value
	}
	addr := a.srv.Listener.Addr().String()
	rec.Reset()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	const huge = 1 << 30 // 1 GiB announced and offered
	head := fmt.Sprintf("POST /subscribe HTTP/1.1\r\nHost: x\r\nCookie: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", cookie, huge)
	status, _, n := rawExchangeCount(t, addr, io.MultiReader(strings.NewReader(head), &repeatReader{b: 'x', left: huge}))
	if status != http.StatusOK && (status < 400 || status >= 500) {
		t.Errorf("POST /subscribe with a 1 GiB body: %d; want its answer (200) or a 4xx", status)
	}
	if n >= 256<<20 {
		t.Errorf("the server took %d bytes of a body it does not need", n)
	}
	t.Logf("1 GiB body: %d, %d bytes written before the server dropped the connection", status, n)

	for _, path := range []string{"/subscribe", "/sub/" + uuid.NewString(), "/authorize"} {
		big := strings.Repeat("a", 2<<20) // over http.DefaultMaxHeaderBytes
		req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: x\r\nCookie: %s; junk=%s\r\n\r\n", path, cookie, big)
		status, h, _ := rawExchangeCount(t, addr, strings.NewReader(req))
		if status != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("GET %s with 2 MiB of headers: %d %v; want 431", path, status, h)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Errorf("the heap grew by %d bytes", grew)
	}
	for _, c := range rec.Calls() { // the /subscribe's own: alice's channel and the broadcast channel
		if c.Op != "Info" && c.Op != "Open" || c.Channel != sub.Channel && c.Channel != sessionpush.SuggestedBroadcastChannel {
			t.Errorf("relay call %v; want only those of alice's /subscribe", c)
		}
	}
}

// TestCrossSite: besides what TestSubscribeRefusesCrossOriginPosts covers,
// a same-site (another subdomain) or opaque ("null") origin cannot POST
// /subscribe, the page's own origin can, and a refused POST opens nothing;
// a foreign page's GET /subscribe (a safe method, let through) is not
// readable by it: no CORS header grants it, not even to a preflight.
func TestCrossSite(t *testing.T) {
	a, rec := newRecordedApp(t)
	b := a.browser().login("alice")
	host := mustURL(a.srv.URL).Host
	for name, tc := range map[string]struct {
		hdr  []string
		want int
	}{
		"same-site":          {[]string{"Sec-Fetch-Site", "same-site", "Origin", "http://other." + host}, 403},
		"opaque origin":      {[]string{"Origin", "null"}, 403},
		"other port":         {[]string{"Origin", "http://127.0.0.1:1"}, 403},
		"https of this host": {[]string{"Origin", "https://evil.example"}, 403},
		"own origin":         {[]string{"Origin", a.srv.URL}, 200},
		"top-level nav":      {[]string{"Sec-Fetch-Site", "none"}, 200},
	} {
		rec.Reset()
		got := b.answer("POST", "/subscribe", tc.hdr...)
		if got.status != tc.want {
			t.Errorf("%s: POST /subscribe: %v; want %d", name, got, tc.want)
		}
		if tc.want == 403 && (len(rec.Calls()) != 0 || got.body != "Forbidden\n") {
			t.Errorf("%s: refused POST: %v, relay calls %v", name, got, rec.Calls())
		}
	}
	for name, tc := range map[string]struct{ method, path string }{
		"GET /subscribe":     {"GET", "/subscribe"},
		"preflight":          {"OPTIONS", "/subscribe"},
		"listener":           {"GET", "/sub/" + uuid.NewString()},
		"listener preflight": {"OPTIONS", "/sub/" + uuid.NewString()},
	} {
		got := b.answer(tc.method, tc.path, "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site",
			"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type")
		for k := range got.header {
			if strings.HasPrefix(strings.ToLower(k), "access-control-") {
				t.Errorf("%s from another site: %s: %q", name, k, got.header[k])
			}
		}
	}
}

// TestCrossSiteWebSocketRefused: a WebSocket handshake with the owner's
// own cookie but another site's Origin (cross-site WebSocket hijacking) is
// refused by the embedded relay, and no listener is added; an EventSource
// from there gets no CORS header that would let the page read it.
func TestCrossSiteWebSocketRefused(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := mustURL(a.srv.URL)
	hdr := http.Header{"Origin": {"http://evil.example"}}
	for _, c := range b.c.Jar.Cookies(u) {
		hdr.Add("Cookie", c.Name+"="+c.Value)
	}
	conn, resp, err := websocket.Dial(ctx, "ws://"+u.Host+sub.URL, &websocket.DialOptions{HTTPHeader: hdr, Subprotocols: []string{"ws+meta.nchan"}})
	if err == nil {
		conn.CloseNow()
		t.Fatal("cross-site WebSocket handshake accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site WebSocket handshake: %v, %v; want 403", resp, err)
	}
	if info, err := a.mgr.Relay().Info(ctx, sub.Channel); err != nil || info.Listeners != 0 {
		t.Fatalf("channel after the refused handshake: %+v, %v; want no listener", info, err)
	}
	// EventSource and long-poll answer no CORS header: another site's page
	// cannot read the owner's stream, even were the cookie sent.
	es, code := b.listen(sub.URL, "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site")
	if code != 200 {
		t.Fatalf("owner's EventSource: %d", code)
	}
	for k := range es.resp.Header {
		if strings.HasPrefix(strings.ToLower(k), "access-control-") {
			t.Errorf("owner's EventSource from another site: %s: %q", k, es.resp.Header[k])
		}
	}
	es.resp.Body.Close()

	// The same handshake from the page's origin is let in.
	hdr.Set("Origin", a.srv.URL)
	conn, _, err = websocket.Dial(ctx, "ws://"+u.Host+sub.URL, &websocket.DialOptions{HTTPHeader: hdr, Subprotocols: []string{"ws+meta.nchan"}})
	if err != nil {
		t.Fatalf("same-origin handshake: %v", err)
	}
	conn.CloseNow()
}

// TestAnswersNotCacheable: the answers that carry or deny a channel ID
// are kept out of shared caches (Cache-Control: no-store) and vary with the
// cookie, so that no cache hands one session's channel to another; the
// /subscribe answer is not to be sniffed as another type.
func TestAnswersNotCacheable(t *testing.T) {
	a, _ := newRecordedApp(t)
	alice := a.browser().login("alice")
	sub := alice.subscribe()
	for name, got := range map[string]answer{
		"/subscribe":            alice.answer("GET", "/subscribe"),
		"/subscribe text":       alice.answer("GET", "/subscribe", "Accept", "text/plain"),
		"/subscribe signed out": a.browser().answer("GET", "/subscribe"),
		"/authorize":            alice.answer("GET", "/authorize", sessionpush.AuthorizeHeader, sub.Channel),
		"/authorize refused":    a.browser().answer("GET", "/authorize", sessionpush.AuthorizeHeader, sub.Channel),
		"/sub refused":          a.browser().answer("GET", sub.URL),
	} {
		if got.header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: %v; want Cache-Control: no-store", name, got)
		}
		if got.status == 200 && !slices.Contains(got.header.Values("Vary"), "Cookie") {
			t.Errorf("%s: %v; want Vary: Cookie", name, got)
		}
		if got.status == 200 && strings.HasPrefix(name, "/subscribe") && got.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: %v; want X-Content-Type-Options: nosniff", name, got)
		}
	}
}

// TestOriginPatterns: Config.OriginPatterns is the kit's one origin policy.
// An origin it names may POST /subscribe from its pages and open WebSocket
// listeners on the embedded relay; any other gets 403 on both.
func TestOriginPatterns(t *testing.T) {
	a := newApp(t, func(c *sessionpush.Config) {
		c.Relay = nil // the embedded relay New builds, with the same patterns
		c.OriginPatterns = []string{"*.example.com", "https://app.example.org"}
	})
	t.Cleanup(func() { a.mgr.Shutdown(context.Background()) })
	b := a.browser().login("alice")
	sub := b.subscribe()
	u := mustURL(a.srv.URL)
	for origin, want := range map[string]int{
		"https://app.example.com": 200, // host pattern: any scheme
		"http://app.example.com":  200,
		"https://app.example.org": 200, // scheme://host pattern
		"http://app.example.org":  403,
		"https://example.com":     403, // *.example.com needs a subdomain
		"https://evil.example":    403,
	} {
		t.Run(origin, func(t *testing.T) {
			if code := b.status("POST", "/subscribe", nil, "Origin", origin, "Sec-Fetch-Site", "cross-site"); code != want {
				t.Errorf("POST /subscribe from %s: %d, want %d", origin, code, want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			hdr := http.Header{"Origin": {origin}}
			for _, c := range b.c.Jar.Cookies(u) {
				hdr.Add("Cookie", c.Name+"="+c.Value)
			}
			conn, resp, err := websocket.Dial(ctx, "ws://"+u.Host+sub.URL, &websocket.DialOptions{HTTPHeader: hdr})
			switch {
			case want == 200 && err != nil:
				t.Errorf("WebSocket from %s: %v, want accepted", origin, err)
			case want == 403 && (err == nil || resp == nil || resp.StatusCode != http.StatusForbidden):
				t.Errorf("WebSocket from %s: %v, %v; want 403", origin, resp, err)
			}
			if conn != nil {
				conn.Close(websocket.StatusNormalClosure, "")
			}
		})
	}
}
