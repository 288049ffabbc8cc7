package nchan

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// legacy starts the 0.712 fake behind a fault injector and a Client for it.
func legacy(t *testing.T, opts Options) (*Client, *pushModule, *faultInjector, *httptest.Server) {
	t.Helper()
	pm := newPushModule(t)
	fi := &faultInjector{}
	srv := pm.start(fi)
	c, err := New(srv.URL+"/publish?channel={channel}", opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, pm, fi, srv
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestNewTemplate(t *testing.T) {
	good := []struct{ tmpl, id, want string }{
		{"http://127.0.0.1:8080/pub/{channel}", "a.b-c_D", "http://127.0.0.1:8080/pub/a.b-c_D"},
		{"https://nginx.internal/publish?channel={channel}", "x", "https://nginx.internal/publish?channel=x"},
		{"http://h/pub?id={channel}&group=g", "x", "http://h/pub?id=x&group=g"},
		{"http://h/{channel}/pub", "x", "http://h/x/pub"},
	}
	for _, g := range good {
		c, err := New(g.tmpl, Options{})
		if err != nil {
			t.Errorf("New(%q): %v", g.tmpl, err)
			continue
		}
		if got := c.url(g.id); got != g.want {
			t.Errorf("New(%q).url(%q) = %q, want %q", g.tmpl, g.id, got, g.want)
		}
	}
	bad := []string{
		"http://h/pub",                  // no placeholder
		"http://h/{channel}/{channel}",  // twice
		"/pub/{channel}",                // not absolute
		"ftp://h/{channel}",             // not http
		"http://{channel}/pub",          // in the host
		"http://h:{channel}/pub",        // in the port
		"http://h/pub/{channel}#frag",   // fragment
		"http://user:{channel}@h/pub/x", // in the userinfo
		"http://h/pub/{Channel}",        // wrong case
	}
	for _, tmpl := range bad {
		if _, err := New(tmpl, Options{}); err == nil || !strings.HasPrefix(err.Error(), "nchan: publisher URL") {
			t.Errorf("New(%q) = %v, want a publisher URL error", tmpl, err)
		}
	}
}

func TestInvalidIDsSendNothing(t *testing.T) {
	c, pm, fi, _ := legacy(t, Options{})
	ids := []string{"", "../x", "..", ".", "a?b", "a%2F", "a/b", "a b", "a#b", "a&channel=b", "é", strings.Repeat("a", relay.MaxIDLength+1)}
	ctx := ctxTimeout(t, 5*time.Second)
	for _, id := range ids {
		checks := map[string]error{}
		_, checks["open"] = c.Open(ctx, id)
		_, checks["publish"] = c.Publish(ctx, id, relay.Message{Body: []byte("x")})
		_, checks["info"] = c.Info(ctx, id)
		checks["close"] = c.Close(ctx, id)
		for op, err := range checks {
			var e *Error
			if !errors.Is(err, relay.ErrInvalidID) || !errors.As(err, &e) || e.Op != op || e.Channel != id {
				t.Errorf("%s(%q) = %v, want an *Error for %s wrapping relay.ErrInvalidID", op, clip(id), err, op)
			}
		}
	}
	if n := fi.requests(); n != 0 {
		t.Errorf("the server saw %d requests, want none", n)
	}
	if n := pm.total(); n != 0 {
		t.Errorf("the fake saw %d publisher requests", n)
	}
	// The longest valid ID is accepted.
	if _, err := c.Open(ctx, strings.Repeat("a", relay.MaxIDLength)); err != nil {
		t.Errorf("Open of a %d-byte ID: %v", relay.MaxIDLength, err)
	}
}

func TestLegacyOpenCreatesWithPut(t *testing.T) {
	c, pm, _, _ := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	cursor, err := c.Open(ctx, "chan1")
	if err != nil {
		t.Fatal(err)
	}
	if cursor != relay.NoCursor {
		t.Errorf("cursor %q, want %q: 0.712 creates an empty channel", cursor, relay.NoCursor)
	}
	if pm.count("GET") != 1 || pm.count("PUT") != 1 || pm.count("POST") != 0 {
		t.Errorf("requests GET %d PUT %d POST %d, want 1 1 0", pm.count("GET"), pm.count("PUT"), pm.count("POST"))
	}
	if ch, ok := pm.channel("chan1"); !ok || len(ch.msgs) != 0 {
		t.Fatalf("fake channel exists=%v, want created without a message", ok)
	}
	// Idempotent: the existing channel comes back, with no second PUT.
	if cursor, err = c.Open(ctx, "chan1"); err != nil || cursor != relay.NoCursor {
		t.Errorf("second Open: %q, %v", cursor, err)
	}
	if pm.count("PUT") != 1 {
		t.Errorf("second Open sent a PUT")
	}
	// Once it holds messages, 0.712 cannot say their IDs: the cursor is unknown.
	if _, err := c.Publish(ctx, "chan1", relay.Message{Body: []byte("m")}); err != nil {
		t.Fatal(err)
	}
	if cursor, err = c.Open(ctx, "chan1"); err != nil || cursor != "" {
		t.Errorf("Open of a channel with messages: %q, %v; want \"\"", cursor, err)
	}
}

// A listener of the push module that starts after Open sees exactly the
// pushed messages, then waits for the next one.
func TestLegacyListenerSeesOnlyPushedMessages(t *testing.T) {
	c, _, _, srv := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := c.Open(ctx, "walk"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "walk", relay.Message{Body: []byte("one"), ContentType: "text/plain"}); err != nil {
		t.Fatal(err)
	}
	resp := longPoll(t, srv.URL+"/activity?channel=walk", "", "")
	if resp.code != 200 || resp.body != "one" || resp.lastModified == "" || resp.etag != "0" {
		t.Fatalf("first poll: %+v, want 200 \"one\" with Last-Modified and Etag 0", resp)
	}
	next := make(chan polled, 1)
	go func() { next <- longPoll(t, srv.URL+"/activity?channel=walk", resp.lastModified, resp.etag) }()
	receipt, err := c.Publish(ctx, "walk", relay.Message{Body: []byte("two")})
	if err != nil {
		t.Fatal(err)
	}
	if receipt.ID != "" || receipt.Queued != 2 {
		t.Errorf("receipt %+v, want no ID (0.712 reports none) and 2 queued", receipt)
	}
	if got := <-next; got.code != 200 || got.body != "two" {
		t.Fatalf("second poll: %+v, want 200 \"two\"", got)
	}
}

type polled struct {
	code               int
	body               string
	lastModified, etag string
}

// longPoll is a raw subscriber request, as a browser would send it.
func longPoll(t *testing.T, url, ims, inm string) polled {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Error(err)
		return polled{}
	}
	if ims != "" {
		req.Header.Set("If-Modified-Since", ims)
		req.Header.Set("If-None-Match", inm)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return polled{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return polled{resp.StatusCode, string(b), resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")}
}

func TestLegacyLongPollTimeoutIs304(t *testing.T) {
	c, _, _, srv := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := c.Open(ctx, "quiet"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got := longPoll(t, srv.URL+"/activity?channel=quiet", "", ""); got.code != http.StatusNotModified || got.body != "" {
		t.Fatalf("poll of an empty channel: %+v, want 304 after the timeout", got)
	}
	if time.Since(start) < 250*time.Millisecond {
		t.Errorf("304 after %v, want it after the 300ms long-poll timeout", time.Since(start))
	}
	if got := longPoll(t, srv.URL+"/activity?channel=never", "", ""); got.code != http.StatusForbidden {
		t.Errorf("poll of a never-created channel: %d, want 403", got.code)
	}
}

func TestLegacyPublishToUnopenedChannel(t *testing.T) {
	c, pm, _, _ := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	_, err := c.Publish(ctx, "nobody", relay.Message{Body: []byte("x")})
	var e *Error
	if !errors.Is(err, relay.ErrChannelNotFound) || !errors.As(err, &e) || e.Status != 404 || e.Op != "publish" {
		t.Fatalf("Publish to an unopened channel: %v, want a 404 *Error wrapping ErrChannelNotFound", err)
	}
	if want := `nchan: publish "nobody": 404 Not Found: relay: channel not found`; err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
	if _, ok := pm.channel("nobody"); ok || pm.count("POST") != 0 {
		t.Errorf("the channel was created (POSTs: %d)", pm.count("POST"))
	}
}

func TestLegacyEmptyMessage(t *testing.T) {
	t.Run("after Open", func(t *testing.T) {
		c, pm, _, _ := legacy(t, Options{})
		ctx := ctxTimeout(t, 5*time.Second)
		if _, err := c.Open(ctx, "e"); err != nil {
			t.Fatal(err)
		}
		_, err := c.Publish(ctx, "e", relay.Message{})
		if !errors.Is(err, ErrEmptyMessage) {
			t.Fatalf("empty Publish: %v, want ErrEmptyMessage", err)
		}
		if pm.count("POST") != 0 {
			t.Errorf("an empty POST was sent although the PUT showed the push module")
		}
	})
	t.Run("unknown server", func(t *testing.T) {
		c, pm, _, _ := legacy(t, Options{})
		ctx := ctxTimeout(t, 5*time.Second)
		other, _ := New(c.prefix+placeholder+c.suffix, Options{})
		if _, err := other.Open(ctx, "e"); err != nil {
			t.Fatal(err)
		}
		_, err := c.Publish(ctx, "e", relay.Message{})
		var e *Error
		if !errors.Is(err, ErrEmptyMessage) || !errors.As(err, &e) || e.Status != 500 {
			t.Fatalf("empty Publish: %v, want a 500 wrapping ErrEmptyMessage", err)
		}
		if _, err := c.Publish(ctx, "e", relay.Message{}); !errors.Is(err, ErrEmptyMessage) || pm.count("POST") != 1 {
			t.Errorf("second empty Publish: %v after %d POSTs, want ErrEmptyMessage without a POST", err, pm.count("POST"))
		}
		if _, err := c.Publish(ctx, "e", relay.Message{Body: []byte("x")}); err != nil {
			t.Errorf("non-empty Publish after that: %v", err)
		}
	})
}

func TestLegacyInfoContentTypes(t *testing.T) {
	c, pm, _, srv := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := c.Open(ctx, "ct"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "ct", relay.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// What 0.712 does to a JSON Accept: Go's client refuses the answer, so
	// the Client must not ask for JSON.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/publish?channel=ct", nil)
	req.Header.Set("Accept", "application/json")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a raw Go request with Accept: application/json got %s; the fake should label it application/json\\x00", resp.Status)
	} else if !strings.Contains(err.Error(), "malformed MIME header") {
		t.Fatalf("raw request: %v, want a malformed MIME header error", err)
	}
	for _, label := range []string{"", "application/json,", "text/json", "application/xml;"} {
		pm.mu.Lock()
		pm.label = label
		pm.mu.Unlock()
		info, err := c.Info(ctx, "ct")
		if err != nil {
			t.Errorf("label %q: Info: %v", label, err)
			continue
		}
		if info.Messages != 1 || info.Listeners != 0 || info.LastMessageID != "" || info.SinceRequest >= 0 {
			t.Errorf("label %q: Info %+v, want 1 message, no subscriber, no ID, never requested", label, info)
		}
	}
}

func TestLegacyCloseIsImmediate(t *testing.T) {
	c, _, _, srv := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := c.Open(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	waiter := make(chan polled, 1)
	go func() { waiter <- longPoll(t, srv.URL+"/activity?channel=gone", "", "") }()
	for { // until the long-poll is waiting
		info, err := c.Info(ctx, "gone")
		if err != nil {
			t.Fatal(err)
		}
		if info.Listeners == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := c.Close(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if got := <-waiter; got.code != http.StatusGone {
		t.Errorf("waiting long-poll got %d, want 410", got.code)
	}
	// Another client, which does not remember the Close, sees 404 at once.
	other, _ := New(srv.URL+"/publish?channel={channel}", Options{})
	if _, err := other.Info(ctx, "gone"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Info after Close: %v, want ErrChannelNotFound", err)
	}
	if err := other.Close(ctx, "gone"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("second Close: %v, want ErrChannelNotFound", err)
	}
	if err := c.Close(ctx, "gone"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("second Close by the same client: %v, want ErrChannelNotFound", err)
	}
	// Re-opening works: PUT creates it again.
	if cursor, err := c.Open(ctx, "gone"); err != nil || cursor != relay.NoCursor {
		t.Errorf("Open after Close: %q, %v", cursor, err)
	}
	if _, err := other.Publish(ctx, "gone", relay.Message{Body: []byte("back")}); err != nil {
		t.Errorf("Publish after re-open: %v", err)
	}
}

func TestRetry503WithinDeadline(t *testing.T) {
	bothPaths(t, testRetry503WithinDeadline)
}

func testRetry503WithinDeadline(t *testing.T, opts Options) {
	opts.MaxRetryWait = 20 * time.Millisecond
	c, pm, fi, _ := legacy(t, opts)
	ctx := ctxTimeout(t, 5*time.Second)
	fi.add(503, 503, 503) // Open's GET, twice more
	if _, err := c.Open(ctx, "r"); err != nil {
		t.Fatalf("Open through three 503s: %v", err)
	}
	if n := fi.requests(); n != 5 { // 3 x 503, GET, PUT
		t.Errorf("%d requests, want 5", n)
	}
	fi.add(503, 503)
	r, err := c.Publish(ctx, "r", relay.Message{Body: []byte("x")})
	if err != nil || r.Queued != 1 {
		t.Fatalf("Publish through two 503s: %+v, %v", r, err)
	}
	if pm.count("POST") != 1 {
		t.Errorf("%d POSTs stored, want 1", pm.count("POST"))
	}
}

func TestRetry503UntilDeadlineNames503(t *testing.T) {
	c, _, fi, _ := legacy(t, Options{})
	for range 1000 {
		fi.add(503)
	}
	const deadline = 400 * time.Millisecond
	ctx := ctxTimeout(t, deadline)
	start := time.Now()
	_, err := c.Open(ctx, "down")
	elapsed := time.Since(start)
	var e *Error
	if !errors.As(err, &e) || e.Status != 503 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open against 503s: %v, want an *Error with status 503 wrapping context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), `nchan: open "down": 503 Service Unavailable`) {
		t.Errorf("error text %q does not name the 503", err)
	}
	// A hang check, not a timing one: giving up takes the deadline plus
	// at most one answer, far below this bound on any machine.
	if elapsed > deadline+5*time.Second {
		t.Errorf("gave up after %v, deadline %v: it waited past its deadline", elapsed, deadline)
	}
	if n := fi.requests(); n < 3 {
		t.Errorf("%d attempts, want several retries", n)
	}
}

func TestNoRetryWhenDisabled(t *testing.T) {
	c, _, fi, _ := legacy(t, Options{MaxRetryTime: -1})
	fi.add(503, 503)
	_, err := c.Info(ctxTimeout(t, 5*time.Second), "x")
	var e *Error
	if !errors.As(err, &e) || e.Status != 503 || fi.requests() != 1 {
		t.Fatalf("Info: %v after %d requests, want one 503", err, fi.requests())
	}
}

func TestOtherStatusesNotRetried(t *testing.T) {
	for _, code := range []int{400, 403, 405, 409, 500, 502} {
		c, _, fi, _ := legacy(t, Options{})
		fi.add(code)
		_, err := c.Info(ctxTimeout(t, 5*time.Second), "x")
		var e *Error
		if !errors.As(err, &e) || e.Status != code || e.Op != "info" || e.Channel != "x" {
			t.Errorf("%d: Info = %v, want an *Error with that status", code, err)
		}
		if errors.Is(err, relay.ErrChannelNotFound) {
			t.Errorf("%d: reported as not found", code)
		}
		if n := fi.requests(); n != 1 {
			t.Errorf("%d: %d requests, want 1 (no retry)", code, n)
		}
	}
}

func TestRetryConnectionErrors(t *testing.T) {
	bothPaths(t, testRetryConnectionErrors)
}

func testRetryConnectionErrors(t *testing.T, opts Options) {
	t.Run("dropped GET", func(t *testing.T) {
		c, _, fi, _ := legacy(t, opts)
		ctx := ctxTimeout(t, 5*time.Second)
		if _, err := c.Open(ctx, "d"); err != nil {
			t.Fatal(err)
		}
		before := fi.requests()
		fi.add(dropConnection, dropConnection)
		if _, err := c.Info(ctx, "d"); err != nil {
			t.Fatalf("Info through two dropped connections: %v", err)
		}
		if n := fi.requests() - before; n != 3 {
			t.Errorf("%d requests, want 3", n)
		}
	})
	t.Run("POST on a reused connection", func(t *testing.T) {
		c, pm, fi, _ := legacy(t, opts)
		ctx := ctxTimeout(t, 5*time.Second)
		if _, err := c.Open(ctx, "d"); err != nil { // leaves an idle keep-alive connection
			t.Fatal(err)
		}
		fi.add(dropConnection)
		if _, err := c.Publish(ctx, "d", relay.Message{Body: []byte("x")}); err != nil {
			t.Fatalf("Publish after nginx closed the kept-alive connection: %v", err)
		}
		if ch, _ := pm.channel("d"); len(ch.msgs) != 1 {
			t.Errorf("%d messages stored, want 1", len(ch.msgs))
		}
	})
	if opts.HTTPClient == nil {
		// The two below bring net/http clients of their own: they run in
		// the net/http pass (TestTransportFreshConnectionPostNotRepeated
		// and the fault tests' outages cover the Client's own transport).
		return
	}
	t.Run("POST on a fresh connection is not repeated", func(t *testing.T) {
		c, pm, fi, srv := legacy(t, Options{})
		ctx := ctxTimeout(t, 5*time.Second)
		if _, err := c.Open(ctx, "d"); err != nil {
			t.Fatal(err)
		}
		fresh, _ := New(srv.URL+"/publish?channel={channel}", Options{
			HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}})
		if _, err := fresh.Info(ctx, "d"); err != nil { // the channel is known open
			t.Fatal(err)
		}
		before := fi.requests()
		fi.add(dropConnection)
		_, err := fresh.Publish(ctx, "d", relay.Message{Body: []byte("x")})
		if err == nil || !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "EOF") {
			t.Fatalf("Publish whose answer was lost: %v, want the EOF (it may have been published)", err)
		}
		if n := fi.requests() - before; n != 1 || pm.count("POST") != 0 {
			t.Errorf("%d requests, %d POSTs reached the fake; want 1 and 0 (no retry)", n, pm.count("POST"))
		}
	})
	t.Run("dial refused", func(t *testing.T) {
		pm := newPushModule(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var once sync.Once
		refused := make(chan error, 1)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(pm.publisher))
		t.Cleanup(srv.Close)
		dialer := &net.Dialer{}
		tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, a)
			if err != nil {
				// Really refused: now start listening, so the retry connects.
				once.Do(func() {
					refused <- err
					l, lerr := net.Listen("tcp", addr)
					if lerr != nil {
						t.Error(lerr)
						return
					}
					srv.Listener = l
					srv.Start()
				})
			}
			return conn, err
		}}
		c, _ := New("http://"+addr+"/publish?channel={channel}", Options{HTTPClient: &http.Client{Transport: tr}})
		cursor, err := c.Open(ctxTimeout(t, 5*time.Second), "late")
		if err != nil || cursor != relay.NoCursor {
			t.Fatalf("Open: %q, %v", cursor, err)
		}
		select {
		case err := <-refused:
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("first dial: %v, want connection refused", err)
			}
		default:
			t.Fatal("no dial was refused")
		}
	})
}

// Every answer, error pages included, is read to the end, so one
// keep-alive connection serves a whole sequence of calls.
func TestConnectionsReused(t *testing.T) {
	c, pm, _, _ := legacy(t, Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := c.Open(ctx, "ka"); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := c.Publish(ctx, "ka", relay.Message{Body: []byte{'a' + byte(i%26)}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Info(ctx, "missing"); !errors.Is(err, relay.ErrChannelNotFound) { // 404
			t.Fatal(err)
		}
	}
	if _, err := c.Publish(ctx, "ka", relay.Message{}); !errors.Is(err, ErrEmptyMessage) {
		t.Fatal(err)
	}
	// A second client does not know it talks to 0.712: it gets the 500 page.
	other, _ := New(c.prefix+placeholder+c.suffix, Options{})
	if _, err := other.Publish(ctx, "ka", relay.Message{}); !errors.Is(err, ErrEmptyMessage) {
		t.Fatal(err)
	}
	if _, err := other.Info(ctx, "ka"); err != nil {
		t.Fatal(err)
	}
	if n := pm.conns.Load(); n != 2 {
		t.Errorf("%d connections for two clients' sequential calls, want 2", n)
	}
}

func TestErrorText(t *testing.T) {
	cases := []struct {
		err  *Error
		want string
	}{
		{&Error{Op: "publish", Channel: "abc", Status: 503}, `nchan: publish "abc": 503 Service Unavailable`},
		{&Error{Op: "publish", Channel: "abc", Status: 503, Err: context.DeadlineExceeded}, `nchan: publish "abc": 503 Service Unavailable: context deadline exceeded`},
		{&Error{Op: "close", Channel: "abc", Status: 404, Err: relay.ErrChannelNotFound}, `nchan: close "abc": 404 Not Found: relay: channel not found`},
		{&Error{Op: "info", Channel: "abc", Err: io.EOF}, `nchan: info "abc": EOF`},
		{&Error{Op: "open", Channel: strings.Repeat("x", 100), Status: 599}, `nchan: open "` + strings.Repeat("x", 64) + `…": 599`},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	if e := (&Error{Err: relay.ErrMessageTooLarge}); !errors.Is(e, relay.ErrMessageTooLarge) {
		t.Error("Unwrap does not reach the cause")
	}
}

func TestPublishHeaders(t *testing.T) {
	var got http.Header
	var gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			io.WriteString(w, "queued messages: 1\r\nlast requested: -1 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1795742138:0")
		case http.MethodPost:
			got = r.Header.Clone()
			b, _ := io.ReadAll(r.Body)
			gotBody = string(b)
			w.Header().Set("Content-Type", "text/json")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, `{"messages": 2, "requested": 3, "subscribers": 1, "last_message_id": "1795742139:4" }`)
		default:
			t.Errorf("unexpected %s", r.Method)
		}
	}))
	defer srv.Close()
	c, _ := New(srv.URL+"/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	r, err := c.Publish(ctx, "h", relay.Message{Body: []byte(`{"a":1}`), ContentType: "application/json", Event: "upd"})
	if err != nil {
		t.Fatal(err)
	}
	if r != (relay.Receipt{ID: "1795742139:4", Listeners: 1, Queued: 2}) {
		t.Errorf("receipt %+v", r)
	}
	if got.Get("Content-Type") != "application/json" || got.Get("X-EventSource-Event") != "upd" || gotBody != `{"a":1}` || got.Get("Accept") != "" {
		t.Errorf("POST headers %v body %q", got, gotBody)
	}
	for _, m := range []relay.Message{{Body: []byte("x"), Event: "a\nb"}, {Body: []byte("x"), ContentType: "text/plain\r\nX-Evil: 1"}} {
		if _, err := c.Publish(ctx, "h", m); err == nil || !strings.Contains(err.Error(), "control character") {
			t.Errorf("Publish(%+v) = %v, want a control character error", m, err)
		}
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	posts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			posts++
		}
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	defer srv.Close()
	c, _ := New(srv.URL+"/pub/{channel}", Options{})
	_, err := c.Info(ctxTimeout(t, 5*time.Second), "x")
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusFound || posts != 0 {
		t.Fatalf("Info against a redirect: %v (followed %d), want a 302 *Error", err, posts)
	}
}

// TestInsufficientStorageIsRelayFull: Nchan answers 507 to a PUT or POST
// when its shared memory is full. Open and Publish then return an *Error
// with Status 507 wrapping relay.ErrRelayFull, sent once (no retry); other
// statuses do not wrap it. (nchan_real_test.go fills a real Nchan.)
func TestInsufficientStorageIsRelayFull(t *testing.T) {
	var puts, posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			if strings.HasSuffix(r.URL.Path, "/new") {
				http.NotFound(w, r)
				return
			}
			io.WriteString(w, "queued messages: 1\r\nlast requested: -1 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1795742138:0")
		case http.MethodPut:
			puts.Add(1)
			w.WriteHeader(http.StatusInsufficientStorage)
		case http.MethodPost:
			posts.Add(1)
			w.WriteHeader(http.StatusInsufficientStorage)
		}
	}))
	defer srv.Close()
	c, _ := New(srv.URL+"/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 5*time.Second)
	_, openErr := c.Open(ctx, "new")
	_, pubErr := c.Publish(ctx, "old", relay.Message{Body: []byte("x")})
	for op, err := range map[string]error{"open": openErr, "publish": pubErr} {
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusInsufficientStorage || e.Op != op || !errors.Is(err, relay.ErrRelayFull) {
			t.Errorf("%s against 507: %v; want an *Error of %s with Status 507 wrapping relay.ErrRelayFull", op, err, op)
		}
		if errors.Is(err, relay.ErrChannelNotFound) || errors.Is(err, relay.ErrMessageTooLarge) {
			t.Errorf("%s against 507: %v also reads as another sentinel", op, err)
		}
	}
	if puts.Load() != 1 || posts.Load() != 1 {
		t.Errorf("%d PUTs, %d POSTs; want 1 of each (507 is not retried)", puts.Load(), posts.Load())
	}
	if e := (&Error{Op: "publish", Channel: "x", Status: http.StatusBadGateway}); errors.Is(e, relay.ErrRelayFull) {
		t.Error("a 502 reads as relay.ErrRelayFull")
	}
	// A failed allocation is 500 on Nchan: full too, for a PUT or a POST
	// with a body; a 500 to a GET is not.
	five := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/new"):
			http.NotFound(w, r)
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/old"):
			io.WriteString(w, "queued messages: 1\r\nlast requested: -1 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1795742138:0")
		default:
			http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		}
	}))
	defer five.Close()
	c5, _ := New(five.URL+"/pub/{channel}", Options{})
	_, openErr = c5.Open(ctx, "new")
	_, pubErr = c5.Publish(ctx, "old", relay.Message{Body: []byte("x")})
	_, infoErr := c5.Info(ctx, "broken")
	for op, tc := range map[string]struct {
		err  error
		full bool
	}{"open": {openErr, true}, "publish": {pubErr, true}, "info": {infoErr, false}} {
		var e *Error
		if !errors.As(tc.err, &e) || e.Status != 500 || errors.Is(tc.err, relay.ErrRelayFull) != tc.full {
			t.Errorf("%s answered 500: %v; want an *Error of Status 500, relay.ErrRelayFull %v", op, tc.err, tc.full)
		}
	}
}
