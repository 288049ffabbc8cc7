package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
)

// edit replaces old by new in conf, which must hold old exactly n times.
func edit(t *testing.T, conf, old, new string, n int) string {
	t.Helper()
	if c := strings.Count(conf, old); c != n {
		t.Fatalf("%s: %q %d times; want %d", shippedConf, old, c, n)
	}
	return strings.ReplaceAll(conf, old, new)
}

// TestNginxPublisherLoopbackOnly reads the shipped config: the publisher
// location lives only in a server block that listens on 127.0.0.1 alone,
// and the public server has no Nchan publisher.
func TestNginxPublisherLoopbackOnly(t *testing.T) {
	conf := nginxConf(t)
	servers := strings.Split(conf, "\n  server {")[1:]
	if len(servers) != 2 {
		t.Fatalf("%s: %d server blocks; want the public one and the publisher's", shippedConf, len(servers))
	}
	listen := regexp.MustCompile(`(?m)^\s*listen\s+([^;]+);`)
	for _, srv := range servers {
		l := listen.FindAllStringSubmatch(srv, -1)
		hasPub := strings.Contains(srv, "nchan_publisher")
		switch {
		case len(l) != 1:
			t.Errorf("server block with listen %q; want exactly one", l)
		case hasPub && l[0][1] != `127.0.0.1:{{port "pub"}}`:
			t.Errorf("the publisher's server listens on %q; want 127.0.0.1 only", l[0][1])
		case !hasPub && l[0][1] != "{{.Addr}}":
			t.Errorf("a server block without the publisher listens on %q; want the public address", l[0][1])
		}
	}
}

// TestNginxPublisherBehindProxy puts a reverse proxy on the same host in
// front of nginx's public port, forwarding every path, method and header
// as it comes (so every request reaches nginx from 127.0.0.1, the case in
// which an address check lets anyone through). No request through it
// reaches the publisher: no answer carries channel info, alice's channel
// keeps its messages, the channel never opened stays unopened, and the
// broadcast channel is not created. The same publish sent to the publisher
// port directly is taken, so the check can fail.
func TestNginxPublisherBehindProxy(t *testing.T) {
	s := startNginxSite(t)
	alice := newBrowser(t, s.URL)
	alice.mustLogin("alice")
	sub := alice.subscribe()
	public, _ := url.Parse(s.URL)
	pubHost := strings.TrimPrefix(pubURL(s.Nginx), "http://")
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(public)
			pr.Out.Host = pr.In.Host // as given, Host of the publisher included
			pr.Out.Header = pr.In.Header.Clone()
			pr.Out.URL.RawPath, pr.Out.URL.Path = pr.In.URL.RawPath, pr.In.URL.Path
		},
	})
	t.Cleanup(proxy.Close)
	proxyAddr := strings.TrimPrefix(proxy.URL, "http://")

	messages := func(ch string) int {
		t.Helper()
		info, err := s.relay.Info(t.Context(), ch)
		if err != nil {
			t.Fatalf("channel %s: %v", ch, err)
		}
		return info.Messages
	}
	before := messages(sub.Channel)
	never := uuid.NewString()
	bc := sessionpush.SuggestedBroadcastChannel

	// send writes one raw request to the proxy and returns the answer.
	send := func(method, target string, hdr []string) (int, string) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
		host := proxyAddr
		for i := 0; i+1 < len(hdr); i += 2 {
			if hdr[i] == "Host" {
				host = hdr[i+1]
				continue
			}
			fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
		}
		fmt.Fprintf(&b, "Host: %s\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nintruder", host)
		if _, err := conn.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		return resp.StatusCode, body.String()
	}

	headers := map[string][]string{
		"plain":             nil,
		"forwarded for":     {"X-Forwarded-For", "127.0.0.1", "X-Real-IP", "127.0.0.1", "Forwarded", "for=127.0.0.1;host=" + pubHost},
		"publisher Host":    {"Host", pubHost},
		"forwarded host":    {"X-Forwarded-Host", pubHost, "X-Forwarded-Port", strings.Split(pubHost, ":")[1], "X-Forwarded-Proto", "http"},
		"rewrite headers":   {"X-Original-URL", "/pub/" + sub.Channel, "X-Rewrite-URL", "/pub/" + sub.Channel, "X-Accel-Redirect", "/pub/" + sub.Channel},
		"method override":   {"X-HTTP-Method-Override", "DELETE", "X-Method-Override", "DELETE"},
		"websocket upgrade": {"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
	}
	var paths []string
	for _, ch := range []string{sub.Channel, never, bc} {
		paths = append(paths,
			"/pub/"+ch, "//pub/"+ch, "/pub//"+ch, "/./pub/"+ch, "/sub/../pub/"+ch, "/sub/%2e%2e/pub/"+ch,
			"/sub/..%2Fpub/"+ch, "/pub%2F"+ch, "/%70ub/"+ch, "/PUB/"+ch, "/pub/"+ch+"/", "/pub/"+ch+"?id="+ch,
			"/sub/"+ch+"/../../pub/"+ch, "/pub/"+ch+"%3F", "/pub/"+ch+";x", "http://"+pubHost+"/pub/"+ch,
		)
	}
	paths = append(paths, "/nchan_status", "//nchan_status", "/pub?id="+sub.Channel, "/pub/?id="+sub.Channel)
	leak := regexp.MustCompile(`(?i)queued messages|active subscribers|last message id|"messages"|shared memory|nchan version`)
	sent := 0
	for _, path := range paths {
		for _, method := range []string{"POST", "PUT", "DELETE", "GET", "PATCH", "OPTIONS"} {
			for name, hdr := range headers {
				status, body := send(method, path, hdr)
				sent++
				if status >= 200 && status < 300 || leak.MatchString(body) {
					t.Errorf("%s %s through the proxy (%s): %d %q; want a refusal", method, path, name, status, body)
				}
			}
		}
	}
	t.Logf("%d requests through the proxy, none reached the publisher", sent)

	if got := messages(sub.Channel); got != before {
		t.Errorf("alice's channel holds %d messages after the requests through the proxy; want %d", got, before)
	}
	for _, ch := range []string{never, bc} {
		if _, err := s.relay.Info(t.Context(), ch); !errors.Is(err, relay.ErrChannelNotFound) {
			t.Errorf("channel %s after the requests through the proxy: %v; want not found", ch, err)
		}
	}
	// The proxy works, and the publisher port takes a publish.
	if resp, _ := newBrowser(t, proxy.URL).do("GET", "/client.js", "", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /client.js through the proxy: %s; want 200", resp.Status)
	}
	if status, err := publish(pubURL(s.Nginx)+"/pub/"+sub.Channel, `"direct"`); status != http.StatusAccepted {
		t.Errorf("POST to the publisher port: %d %v; want 202", status, err)
	}
	if got := messages(sub.Channel); got != before+1 {
		t.Errorf("alice's channel after a direct publish: %d messages; want %d", got, before+1)
	}
}

// TestNginxListenerAnswersNoStore: every answer of the subscriber
// locations, to a listener let in or refused, on a session channel and on
// the broadcast channel, carries Cache-Control: no-store and Vary: Cookie.
// The shipped config with a 1 s nchan_subscriber_timeout (30 s), so that a
// long-poll times out (408) within the test.
func TestNginxListenerAnswersNoStore(t *testing.T) {
	conf := edit(t, nginxConf(t), "nchan_subscriber_timeout 30;", "nchan_subscriber_timeout 1;", 2)
	bc := sessionpush.SuggestedBroadcastChannel
	s := startNginxSiteWith(t, conf, func(c *sessionpush.Config) { c.BroadcastChannel = bc })
	alice, bob := newBrowser(t, s.URL), newBrowser(t, s.URL)
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	sub := alice.subscribe()
	if resp, body := alice.postJSON("/push", `"hi"`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push: %s %s", resp.Status, body)
	}
	if resp, body := alice.postJSON("/broadcast", `"all"`); resp.StatusCode != http.StatusOK {
		t.Fatalf("broadcast: %s %s", resp.Status, body)
	}

	check := func(what string, resp *http.Response, wantStatus int) {
		t.Helper()
		if resp.StatusCode != wantStatus {
			t.Errorf("%s: %s; want %d", what, resp.Status, wantStatus)
		}
		cc, vary := resp.Header.Values("Cache-Control"), strings.Join(resp.Header.Values("Vary"), ", ")
		if len(cc) != 1 || cc[0] != "no-store" || !strings.Contains(vary, "Cookie") {
			t.Errorf("%s (%d): Cache-Control %q, Vary %q; want no-store and Cookie", what, resp.StatusCode, cc, vary)
		}
	}
	for _, l := range []struct {
		name, path, cursor string
	}{{"session channel", sub.URL, sub.Cursor}, {"broadcast channel", sub.Broadcast.URL, sub.Broadcast.Cursor}} {
		resp, body := alice.poll(l.path, "Last-Event-ID", l.cursor)
		check(l.name+": long-poll with a message", resp, http.StatusOK)
		if body == "" {
			t.Errorf("%s: long-poll from the cursor: empty body", l.name)
		}
		resp, _ = alice.poll(l.path, "If-Modified-Since", resp.Header.Get("Last-Modified"), "If-None-Match", resp.Header.Get("Etag"))
		check(l.name+": long-poll timed out", resp, http.StatusRequestTimeout)

		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+l.path, nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Last-Event-ID", l.cursor)
		resp, err := alice.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		check(l.name+": EventSource stream", resp, http.StatusOK)
		resp.Body.Close()
		cancel()

		resp, _ = newBrowser(t, s.URL).poll(l.path)
		check(l.name+": refused, no session", resp, http.StatusForbidden)
	}
	resp, _ := bob.poll(sub.URL, "Last-Event-ID", sub.Cursor)
	check("another session's channel", resp, http.StatusForbidden)
	resp, _ = alice.poll("/sub/" + uuid.NewString())
	check("a channel never opened", resp, http.StatusForbidden)
}

// TestNginxRelayFull fills the shared memory of an Nchan with 4 MB of it and
// messages that expire after 3 s (the shipped config with those two
// values), until Nchan answers 507. Meanwhile the relay's errors wrap
// relay.ErrRelayFull (*nchan.Error, Status 507), a new user's /subscribe
// answers 503 (not 502) without the cause, and a push 503 with
// Retry-After. Once the messages expire, with nothing done to nginx, the new
// user subscribes and receives a push.
func TestNginxRelayFull(t *testing.T) {
	conf := edit(t, nginxConf(t), "nchan_shared_memory_size 576M;", "nchan_shared_memory_size 4M;", 1)
	conf = edit(t, conf, "nchan_message_timeout 1h;", "nchan_message_timeout 3s;", 1)
	s := startNginxSiteWith(t, conf, nil)
	alice, bob := newBrowser(t, s.URL), newBrowser(t, s.URL)
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	alice.subscribe()

	// fill takes all of Nchan's memory: 60 KiB messages to new channels
	// until Nchan refuses one, then 4 KiB, 256 B and empty ones (what
	// opening a channel stores), so that no fragment is left. It returns
	// the statuses of the refusals that wrapped relay.ErrRelayFull.
	fill := func() map[int]int {
		t.Helper()
		refusals := map[int]int{}
		for _, size := range []int{60 << 10, 4 << 10, 256, 0} {
			body := bytes.Repeat([]byte("x"), size)
			for i := 0; ; i++ {
				if i == 2000 {
					t.Fatalf("Nchan took 2,000 messages of %d bytes more\n%s", size, s.ErrorLog())
				}
				ch := uuid.NewString()
				_, err := s.relay.Open(t.Context(), ch)
				if err == nil && size > 0 {
					_, err = s.relay.Publish(t.Context(), ch, relay.Message{Body: body})
				}
				var ne *nchan.Error
				if errors.Is(err, relay.ErrRelayFull) && errors.As(err, &ne) {
					refusals[ne.Status]++
					break
				}
				if err != nil {
					t.Fatalf("filling with %d bytes: %v; want success or relay.ErrRelayFull", size, err)
				}
			}
		}
		return refusals
	}
	refusals := fill()
	for status := range refusals {
		if status != http.StatusInsufficientStorage && status != http.StatusInternalServerError {
			t.Errorf("Nchan refused with %d wrapping relay.ErrRelayFull; want 507 or 500", status)
		}
	}
	t.Logf("full: Nchan refused with %v (status: count)", refusals)

	resp, text := bob.do("POST", "/subscribe", "", "")
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(text, "nchan") || strings.Contains(text, "memory") {
		t.Errorf("a new user's /subscribe while full: %s %q; want 503 without the cause", resp.Status, text)
	}
	resp, text = alice.postJSON("/push", `"while full"`)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("alice's push while full: %s %q, Retry-After %q; want 503 with Retry-After", resp.Status, text, resp.Header.Get("Retry-After"))
	}
	for status := range fill() {
		refusals[status]++
	}

	// Recovery: the messages expire (3 s) and Nchan frees them; nothing is
	// done to nginx. Until then /subscribe and pushes answer 503.
	start := time.Now()
	var sub sessionpush.Subscription
	for {
		resp, text := bob.do("POST", "/subscribe", "", "")
		if resp.StatusCode == http.StatusOK {
			sub = bob.subscribe()
			if resp, _ := bob.postJSON("/push", `"back"`); resp.StatusCode == http.StatusNoContent {
				break
			}
		} else if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("bob's /subscribe while memory frees: %s %q; want 503, then 200", resp.Status, text)
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("bob cannot subscribe and push a minute after the last fill\n%s", s.ErrorLog())
		}
		time.Sleep(100 * time.Millisecond) // Nchan says nothing when memory frees: poll
	}
	t.Logf("bob subscribed and pushed %v after the last fill", time.Since(start).Round(time.Millisecond))
	if resp, text := bob.poll(sub.URL, "Last-Event-ID", sub.Cursor); resp.StatusCode != http.StatusOK || text != `"back"` {
		t.Errorf("bob's long-poll after recovery: %s %q; want 200 \"back\"", resp.Status, text)
	}
	if resp, text := alice.postJSON("/push", `"again"`); resp.StatusCode != http.StatusNoContent {
		t.Errorf("alice's push after recovery: %s %s; want 204", resp.Status, text)
	}
}

// quietLogger logs warnings and errors only, to the test.
func quietLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}
