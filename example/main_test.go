package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// testApp is the example served by httptest, on a relay the test can
// inspect.
type testApp struct {
	*httptest.Server
	hub *hub.Hub
	mgr *sessionpush.Manager
}

// newTestApp serves the example with alice as its -admin.
func newTestApp(t *testing.T) *testApp {
	t.Helper()
	return newTestAppWith(t, appConfig{Admin: "alice"})
}

func newTestAppWith(t *testing.T, cfg appConfig) *testApp {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := newSessionStore(false)
	h := hub.New(hub.Options{Logger: log})
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Relay: h, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newApp(mgr, store, log, cfg))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Shutdown(context.Background()) }) // first: ends waiting listeners
	return &testApp{Server: srv, hub: h, mgr: mgr}
}

// browser is one user agent: a cookie jar, and redirects not followed.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func (a *testApp) browser(t *testing.T) *browser { return newBrowser(t, a.URL) }

func newBrowser(t *testing.T, base string) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &browser{t: t, base: base, c: c}
}

// do sends a request and returns the response with its body read.
func (b *browser) do(method, path, contentType, body string, header ...string) (*http.Response, string) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.base+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp, string(data)
}

func (b *browser) login(user string) *http.Response {
	b.t.Helper()
	resp, _ := b.do("POST", "/login", "application/x-www-form-urlencoded", url.Values{"user": {user}}.Encode())
	return resp
}

func (b *browser) mustLogin(user string) {
	b.t.Helper()
	if resp := b.login(user); resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("login %q: %s", user, resp.Status)
	}
}

func (b *browser) subscribe() sessionpush.Subscription {
	b.t.Helper()
	resp, body := b.do("POST", "/subscribe", "", "")
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("POST /subscribe: %s %s", resp.Status, body)
	}
	var sub sessionpush.Subscription
	if err := json.Unmarshal([]byte(body), &sub); err != nil {
		b.t.Fatalf("POST /subscribe: %v in %q", err, body)
	}
	return sub
}

func (b *browser) postJSON(path, body string) (*http.Response, string) {
	b.t.Helper()
	return b.do("POST", path, "application/json", body)
}

// poll is one long-poll on url with the given header pairs.
func (b *browser) poll(url string, header ...string) (*http.Response, string) {
	b.t.Helper()
	return b.do("GET", url, "", "", header...)
}

func TestLogin(t *testing.T) {
	a := newTestApp(t)
	t.Run("good name", func(t *testing.T) {
		for _, user := range []string{"alice", "Bob_2-x", strings.Repeat("z", 64)} {
			resp := a.browser(t).login(user)
			if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
				t.Fatalf("login %q: %s, Location %q; want 303 to /", user, resp.Status, resp.Header.Get("Location"))
			}
			var c *http.Cookie
			for _, rc := range resp.Cookies() {
				if rc.Name == sessionName {
					c = rc
				}
			}
			switch {
			case c == nil:
				t.Fatalf("login %q: no %q cookie in %q", user, sessionName, resp.Header["Set-Cookie"])
			case !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure || c.Path != "/":
				t.Errorf("cookie: HttpOnly %v, SameSite %v, Secure %v, Path %q; want HttpOnly, Lax, not Secure, /",
					c.HttpOnly, c.SameSite, c.Secure, c.Path)
			}
		}
	})
	for name, user := range map[string]string{
		"empty":         "",
		"space":         "a b",
		"slash":         "a/b",
		"non-ASCII":     "zoë",
		"markup":        "<b>",
		"newline":       "bob\n",
		"65 bytes":      strings.Repeat("z", 65),
		"dot":           "a.b",
		"leading space": " a",
	} {
		t.Run("bad name/"+name, func(t *testing.T) {
			b := a.browser(t)
			if resp := b.login(user); resp.StatusCode != http.StatusBadRequest {
				t.Errorf("login %q: %s; want 400", user, resp.Status)
			}
			if resp, _ := b.do("POST", "/subscribe", "", ""); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("/subscribe after a refused login: %s; want 401", resp.Status)
			}
		})
	}
	t.Run("-secure", func(t *testing.T) {
		if o := newSessionStore(true).Options; !o.Secure || !o.HttpOnly || o.SameSite != http.SameSiteLaxMode {
			t.Errorf("cookie options with -secure: %+v; want Secure, HttpOnly, Lax", o)
		}
	})
	t.Run("GET", func(t *testing.T) {
		if resp, _ := a.browser(t).do("GET", "/login", "", ""); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET /login: %s; want 405", resp.Status)
		}
	})
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestSubscribe(t *testing.T) {
	a := newTestApp(t)
	alice, bob := a.browser(t), a.browser(t)
	for _, method := range []string{"GET", "POST"} {
		if resp, _ := alice.do(method, "/subscribe", "", ""); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s /subscribe before login: %s; want 401", method, resp.Status)
		}
	}
	alice.mustLogin("alice")
	bob.mustLogin("bob")

	sub := alice.subscribe()
	if !uuidV4.MatchString(sub.Channel) || sub.URL != "/sub/"+sub.Channel || sub.Cursor != relay.NoCursor {
		t.Fatalf("subscription %+v; want a UUID channel, url /sub/<channel>, cursor %q", sub, relay.NoCursor)
	}
	resp, body := alice.do("GET", "/subscribe", "", "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" ||
		!strings.Contains(body, `"channel":"`+sub.Channel+`"`) {
		t.Errorf("GET /subscribe again: %s %s %s; want the same channel as JSON", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	if _, body := alice.do("GET", "/subscribe", "", "", "Accept", "text/plain"); body != sub.Channel {
		t.Errorf("GET /subscribe, Accept: text/plain: %q; want %q", body, sub.Channel)
	}

	if other := bob.subscribe(); other.Channel == sub.Channel {
		t.Fatalf("alice and bob share channel %s", sub.Channel)
	}
	for name, tc := range map[string]struct {
		b    *browser
		path string
		want int
	}{
		"another session's channel": {bob, sub.URL, http.StatusForbidden},
		"signed out":                {a.browser(t), sub.URL, http.StatusForbidden},
		"unknown channel":           {alice, "/sub/7f1c1b6e-3b4a-4c5d-8e9f-0a1b2c3d4e5f", http.StatusForbidden},
		"not a channel id":          {alice, "/sub/not-a-uuid", http.StatusBadRequest},
	} {
		if resp, _ := tc.b.poll(tc.path); resp.StatusCode != tc.want {
			t.Errorf("%s: GET %s: %s; want %d", name, tc.path, resp.Status, tc.want)
		}
	}
}

func TestPush(t *testing.T) {
	a := newTestApp(t)
	b := a.browser(t)
	if resp, _ := b.postJSON("/push", `{"text":"hi"}`); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("push before login: %s; want 401", resp.Status)
	}
	b.mustLogin("alice")
	if resp, _ := b.postJSON("/push", `{"text":"hi"}`); resp.StatusCode != http.StatusConflict {
		t.Errorf("push before /subscribe: %s; want 409", resp.Status)
	}
	sub := b.subscribe()

	for name, tc := range map[string]struct {
		body string
		want int
	}{
		"empty":      {"", http.StatusBadRequest},
		"not JSON":   {`{"text":`, http.StatusBadRequest},
		"two values": {`{} {}`, http.StatusBadRequest},
		"too large":  {`"` + strings.Repeat("x", maxBody) + `"`, http.StatusRequestEntityTooLarge},
	} {
		if resp, body := b.postJSON("/push", tc.body); resp.StatusCode != tc.want {
			t.Errorf("%s: push: %s %s; want %d", name, resp.Status, body, tc.want)
		}
	}

	first, second := `{"text":"hi","at":1}`, `["second",2]`
	for _, m := range []string{first, second} {
		if resp, body := b.postJSON("/push", m); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("push %s: %s %s; want 204", m, resp.Status, body)
		}
	}
	// Long-poll from the cursor, then walk with Last-Modified and Etag.
	resp, body := b.poll(sub.URL, "Last-Event-ID", sub.Cursor)
	if resp.StatusCode != http.StatusOK || body != first || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("long-poll from the cursor: %s %q %q; want 200 %s as application/json",
			resp.Status, resp.Header.Get("Content-Type"), body, first)
	}
	lm, etag := resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")
	if lm == "" || etag == "" {
		t.Fatalf("long-poll: Last-Modified %q, Etag %q; want both", lm, etag)
	}
	resp, body = b.poll(sub.URL, "If-Modified-Since", lm, "If-None-Match", etag)
	if resp.StatusCode != http.StatusOK || body != second {
		t.Fatalf("long-poll walk: %s %q; want 200 %s", resp.Status, body, second)
	}
}

func TestEventSource(t *testing.T) {
	a := newTestApp(t)
	b := a.browser(t)
	b.mustLogin("alice")
	sub := b.subscribe()
	b.postJSON("/push", `{"n":1}`)
	b.postJSON("/push", `{"n":2}`)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", a.URL+sub.URL+"?last_event_id="+url.QueryEscape(sub.Cursor), nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("EventSource: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	var ids, data []string
	for sc := bufio.NewScanner(resp.Body); len(data) < 2 && sc.Scan(); {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			ids = append(ids, id)
		}
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			data = append(data, d)
		}
	}
	if len(ids) != 2 || ids[0] == ids[1] || strings.Join(data, " ") != `{"n":1} {"n":2}` {
		t.Errorf("EventSource: ids %q, data %q; want two ids and both messages", ids, data)
	}
}

func TestBroadcast(t *testing.T) {
	a := newTestApp(t)
	alice, bob, carol := a.browser(t), a.browser(t), a.browser(t)
	if resp, _ := alice.postJSON("/broadcast", `{}`); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("broadcast before login: %s; want 401", resp.Status)
	}
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	carol.mustLogin("carol") // signed in, but her channel is never opened
	subs := map[*browser]sessionpush.Subscription{alice: alice.subscribe(), bob: bob.subscribe()}

	if resp, _ := alice.postJSON("/broadcast", `nope`); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("broadcast of non-JSON: %s; want 400", resp.Status)
	}
	news := `{"news":"hello, all"}`
	if resp, body := carol.postJSON("/broadcast", news); resp.StatusCode != http.StatusForbidden {
		t.Errorf("broadcast by carol, not the -admin: %s %s; want 403", resp.Status, body)
	}
	resp, body := alice.postJSON("/broadcast", news)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != `{"channels":2,"listeners":0}` {
		t.Fatalf("broadcast: %s %s; want 200 {\"channels\":2,\"listeners\":0}", resp.Status, body)
	}
	for b, sub := range subs {
		if resp, body := b.poll(sub.URL, "Last-Event-ID", sub.Cursor); resp.StatusCode != http.StatusOK || body != news {
			t.Errorf("long-poll after the broadcast: %s %q; want 200 %s", resp.Status, body, news)
		}
	}
}

func TestLogout(t *testing.T) {
	a := newTestApp(t)
	b := a.browser(t)
	b.mustLogin("alice")
	sub := b.subscribe()

	polled := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest("GET", a.URL+sub.URL, nil)
		req.Header.Set("Last-Event-ID", sub.Cursor)
		resp, err := b.c.Do(req)
		if err != nil {
			t.Error(err)
			resp = &http.Response{}
		} else {
			resp.Body.Close()
		}
		polled <- resp
	}()
	waitForListeners(t, a.hub, sub.Channel, 1)

	resp, _ := b.do("POST", "/logout", "", "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("logout: %s to %q; want 303 to /", resp.Status, resp.Header.Get("Location"))
	}
	if got := (<-polled).StatusCode; got != http.StatusGone {
		t.Errorf("waiting long-poll after logout: %d; want 410", got)
	}
	if resp, _ := b.do("POST", "/subscribe", "", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/subscribe after logout: %s; want 401", resp.Status)
	}
	if ok, err := a.mgr.Exists(t.Context(), sub.Channel); ok || err != nil {
		t.Errorf("channel after logout: exists %v, %v; want closed", ok, err)
	}
	u, _ := url.Parse(a.URL)
	if cookies := b.c.Jar.Cookies(u); len(cookies) != 0 {
		t.Errorf("cookies after logout: %v; want none", cookies)
	}
}

// waitForListeners waits until the channel has n listeners on h.
func waitForListeners(t *testing.T, h *hub.Hub, channel string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		info, err := h.Info(t.Context(), channel)
		if err != nil {
			t.Fatal(err)
		}
		if info.Listeners == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("channel %s: %d listeners; want %d", channel, info.Listeners, n)
		}
	}
}

func TestPage(t *testing.T) {
	a := newTestApp(t)
	b := a.browser(t)
	resp, body := b.do("GET", "/", "", "")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{`action="/login"`, `name="user"`} {
		if !strings.Contains(body, want) {
			t.Errorf("signed-out page lacks %s", want)
		}
	}
	if strings.Contains(body, "client.js") {
		t.Errorf("signed-out page loads the client")
	}

	b.mustLogin("alice")
	_, body = b.do("GET", "/", "", "")
	for _, want := range []string{`<strong id="user">alice</strong>`, `action="/logout"`, `src="/client.js"`, `id="push"`, `id="broadcast"`} {
		if !strings.Contains(body, want) {
			t.Errorf("signed-in page lacks %s", want)
		}
	}
	if strings.Contains(body, `action="/login"`) {
		t.Errorf("signed-in page still shows the sign-in form")
	}
	bob := a.browser(t)
	bob.mustLogin("bob")
	if _, body := bob.do("GET", "/", "", ""); !strings.Contains(body, `id="push"`) || strings.Contains(body, `id="broadcast"`) {
		t.Errorf("bob's page (not the -admin): push button %v, broadcast button %v; want only push",
			strings.Contains(body, `id="push"`), strings.Contains(body, `id="broadcast"`))
	}
	if resp, _ := b.do("GET", "/index.html", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /index.html: %s; want 404", resp.Status)
	}
}

func TestClientJS(t *testing.T) {
	a := newTestApp(t)
	resp, body := a.browser(t).do("GET", "/client.js", "", "")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Fatalf("GET /client.js: %s %q; want 200 text/javascript", resp.Status, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(body, "SessionPush") {
		t.Errorf("client.js does not define SessionPush")
	}
}

// program is run(ctx, args, ...) in a goroutine, as `go run ./example`.
type program struct {
	URL    string             // where it listens, from its log
	stop   context.CancelFunc // ends run
	exited chan struct{}      // closed when run has returned
	err    error              // run's result, once exited is closed
}

// startProgram runs the program with args until the test ends (or
// p.stop), logging to the test, and waits until it listens.
func startProgram(t *testing.T, args ...string) *program {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &program{stop: cancel, exited: make(chan struct{})}
	logs, logw := io.Pipe()
	go func() {
		p.err = run(ctx, args, logw)
		logw.Close()
		close(p.exited)
	}()
	base := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		for sc := bufio.NewScanner(logs); sc.Scan(); {
			t.Log(sc.Text())
			if _, u, ok := strings.Cut(sc.Text(), "msg=listening url="); ok {
				base <- u
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-p.exited
		<-scanned
	})
	select {
	case p.URL = <-base:
	case <-p.exited:
		t.Fatalf("run %q returned early: %v", args, p.err)
	}
	return p
}

// TestRun starts the program on a free port, listens by EventSource, and
// checks that cancelling the context ends the stream and run.
func TestRun(t *testing.T) {
	p := startProgram(t, "-addr", "127.0.0.1:0")
	b := newBrowser(t, p.URL)
	b.mustLogin("alice")
	sub := b.subscribe()
	req, _ := http.NewRequest("GET", b.base+sub.URL, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.c.Do(req) // the headers come once the listener is counted
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	p.stop()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !strings.HasSuffix(string(rest), ":410: 410 Gone\n\n") {
		t.Errorf("stream at shutdown: %q, %v; want it to end with :410: 410 Gone", rest, err)
	}
	<-p.exited
	if p.err != nil {
		t.Errorf("run: %v", p.err)
	}
}

func TestRunFlags(t *testing.T) {
	if err := run(t.Context(), []string{"-nope"}, io.Discard); err == nil {
		t.Error("run with an unknown flag: no error")
	}
	if err := run(t.Context(), []string{"-addr", "256.0.0.1:http"}, io.Discard); err == nil {
		t.Error("run on a bad address: no error")
	}
	for _, args := range [][]string{
		{"-publish-url", "http://127.0.0.1:8081/pub"},
		{"-publish-url", "/pub/{channel}"},
		{"-subscribe-url", "/sub"},
		{"-session-key", "abc"},
		{"-session-key", strings.Repeat("g", 64)},
		{"-broadcast-channel", "B0ADCA57-0000-4000-8000-000000000000"},
		{"-admin", "a b"},
	} {
		if err := run(t.Context(), append(args, "-addr", "127.0.0.1:0"), io.Discard); err == nil {
			t.Errorf("run %q: no error", args)
		}
	}
}

// TestRunBroadcastChannel runs the program with -broadcast-channel: the
// JSON of /subscribe names the broadcast channel too, which any signed-in
// session may listen to, and /broadcast reaches its listener. Without the
// flag, /subscribe has no "broadcast".
func TestRunBroadcastChannel(t *testing.T) {
	id := sessionpush.SuggestedBroadcastChannel
	p := startProgram(t, "-addr", "127.0.0.1:0", "-broadcast-channel", id, "-admin", "alice")
	b := newBrowser(t, p.URL)
	b.mustLogin("alice")
	resp, body := b.do("POST", "/subscribe", "", "")
	var raw map[string]json.RawMessage
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &raw) != nil || raw["broadcast"] == nil {
		t.Fatalf("POST /subscribe with -broadcast-channel: %s %q; want a \"broadcast\" member", resp.Status, body)
	}
	sub := b.subscribe()
	if sub.Broadcast == nil || sub.Broadcast.Channel != id || sub.Broadcast.URL != "/sub/"+id || sub.Broadcast.Cursor == "" {
		t.Fatalf("subscription %+v: broadcast %+v, want channel %s at /sub/%s", sub, sub.Broadcast, id, id)
	}
	req, _ := http.NewRequest("GET", p.URL+sub.Broadcast.URL+"?last_event_id="+url.QueryEscape(sub.Broadcast.Cursor), nil)
	req.Header.Set("Accept", "text/event-stream")
	stream, err := b.c.Do(req) // the headers come once the listener is counted
	if err != nil || stream.StatusCode != http.StatusOK {
		t.Fatalf("listening to the broadcast channel: %v %v", stream, err)
	}
	defer stream.Body.Close()
	if resp, body := b.postJSON("/broadcast", `{"hello":"all"}`); resp.StatusCode != http.StatusOK || body != `{"channels":1,"listeners":1}`+"\n" {
		t.Errorf("POST /broadcast: %s %q, want {\"channels\":1,\"listeners\":1}", resp.Status, body)
	}
	r := bufio.NewReader(stream.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("broadcast stream: %v", err)
		}
		if line == "data: {\"hello\":\"all\"}\n" {
			break
		}
	}

	plain := startProgram(t, "-addr", "127.0.0.1:0")
	c := newBrowser(t, plain.URL)
	c.mustLogin("bob")
	if resp, body := c.do("POST", "/subscribe", "", ""); resp.StatusCode != http.StatusOK || strings.Contains(body, "broadcast") {
		t.Errorf("POST /subscribe without -broadcast-channel: %s %q", resp.Status, body)
	}
}

// TestAuthorize asks /authorize as nginx's nchan_authorize_request does:
// with the listener's cookie and the channel in X-Channel-Id.
func TestAuthorize(t *testing.T) {
	a := newTestApp(t)
	alice, bob := a.browser(t), a.browser(t)
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	sub := alice.subscribe()
	for name, tc := range map[string]struct {
		b       *browser
		channel string
		want    int
	}{
		"owner":           {alice, sub.Channel, http.StatusNoContent},
		"another session": {bob, sub.Channel, http.StatusForbidden},
		"signed out":      {a.browser(t), sub.Channel, http.StatusForbidden},
		"no channel":      {alice, "", http.StatusForbidden},
		"not a channel":   {alice, strings.ToUpper(sub.Channel), http.StatusForbidden},
	} {
		if resp, _ := tc.b.do("GET", "/authorize", "", "", sessionpush.AuthorizeHeader, tc.channel); resp.StatusCode != tc.want {
			t.Errorf("%s: GET /authorize: %s; want %d", name, resp.Status, tc.want)
		}
	}
}

// TestCrossOriginRefused: a page on another origin cannot make the browser
// sign in, sign out, push or broadcast; the same requests from the page's
// own origin, or from curl, work.
func TestCrossOriginRefused(t *testing.T) {
	a := newTestApp(t)
	b := a.browser(t)
	for _, path := range []string{"/login", "/logout", "/push", "/broadcast", "/subscribe"} {
		resp, _ := b.do("POST", path, "application/x-www-form-urlencoded", "user=mallory", "Sec-Fetch-Site", "cross-site")
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("cross-site POST %s: %s; want 403", path, resp.Status)
		}
	}
	if resp, _ := b.do("POST", "/login", "application/x-www-form-urlencoded", "user=alice", "Sec-Fetch-Site", "same-origin"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("same-origin sign-in: %s; want 303", resp.Status)
	}
	if resp, _ := b.postJSON("/push", `{"ok":true}`); resp.StatusCode == http.StatusForbidden {
		t.Fatalf("push without browser headers: %s", resp.Status)
	}
}
