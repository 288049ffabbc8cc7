package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush"
)

// TestCrossOriginLeavesStateAlone: besides the cross-site Sec-Fetch-Site
// of TestCrossOriginRefused, an older browser's foreign Origin (no
// Sec-Fetch-Site), an opaque "null" Origin and a same-site page are refused
// on every state-changing route, and a refused request changes nothing: the
// session keeps its user and channel, nothing is pushed or broadcast. The
// same requests from curl (neither header) then work.
func TestCrossOriginLeavesStateAlone(t *testing.T) {
	a := newTestApp(t)
	b := a.browser(t)
	b.mustLogin("alice")
	sub := b.subscribe()
	messages := func() int {
		info, err := a.hub.Info(t.Context(), sub.Channel)
		if err != nil {
			t.Fatalf("alice's channel: %v", err)
		}
		return info.Messages
	}
	before := messages()
	routes := []struct{ path, ctype, body string }{
		{"/login", "application/x-www-form-urlencoded", "user=mallory"},
		{"/logout", "", ""},
		{"/push", "application/json", `"forged"`},
		{"/broadcast", "application/json", `"forged"`},
		{"/subscribe", "", ""},
	}
	for name, hdr := range map[string][]string{
		"foreign Origin, no Sec-Fetch-Site": {"Origin", "http://evil.example"},
		"opaque Origin":                     {"Origin", "null"},
		"same-site":                         {"Sec-Fetch-Site", "same-site", "Origin", "http://sub." + strings.TrimPrefix(a.URL, "http://")},
		"cross-site with own Origin":        {"Sec-Fetch-Site", "cross-site", "Origin", a.URL},
	} {
		for _, r := range routes {
			resp, body := b.do("POST", r.path, r.ctype, r.body, hdr...)
			if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
				t.Errorf("%s: POST %s: %s %q, cookies %v; want 403 and no cookie", name, r.path, resp.Status, body, resp.Cookies())
			}
		}
	}
	if now := b.subscribe(); now.Channel != sub.Channel {
		t.Errorf("after the refused requests the session has channel %s; want alice's %s", now.Channel, sub.Channel)
	}
	if got := messages(); got != before {
		t.Errorf("alice's channel has %d messages after the refused requests; want %d", got, before)
	}

	// curl: each route does its work.
	for _, r := range []struct {
		path, ctype, body string
		want              int
	}{
		{"/push", "application/json", `"mine"`, http.StatusNoContent},
		{"/broadcast", "application/json", `"all"`, http.StatusOK},
		{"/subscribe", "", "", http.StatusOK},
		{"/logout", "", "", http.StatusSeeOther},
		{"/login", "application/x-www-form-urlencoded", "user=bob", http.StatusSeeOther},
	} {
		if resp, body := b.do("POST", r.path, r.ctype, r.body); resp.StatusCode != r.want {
			t.Errorf("curl-like POST %s: %s %q; want %d", r.path, resp.Status, body, r.want)
		}
	}
}

// TestCookieFlagsOverHTTP runs the program with and without -secure and
// reads every session cookie that sign-in, /subscribe and logout set over
// HTTP: always HttpOnly and SameSite=Lax, Secure exactly with -secure.
func TestCookieFlagsOverHTTP(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprintf("secure=%v", secure), func(t *testing.T) {
			args := []string{"-addr", "127.0.0.1:0"}
			if secure {
				args = append(args, "-secure")
			}
			p := startProgram(t, args...)
			c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			var cookie string // carried by hand: a jar keeps Secure cookies off http
			var seen int
			send := func(method, path, ctype, body string) {
				t.Helper()
				req, _ := http.NewRequest(method, p.URL+path, strings.NewReader(body))
				if ctype != "" {
					req.Header.Set("Content-Type", ctype)
				}
				if cookie != "" {
					req.Header.Set("Cookie", cookie)
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				for _, ck := range resp.Cookies() {
					seen++
					if ck.Name != "session" || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Secure != secure || ck.Path != "/" {
						t.Errorf("%s %s: cookie %q: HttpOnly=%v SameSite=%v Secure=%v Path=%q; want HttpOnly, Lax, Secure=%v, /",
							method, path, ck.Name, ck.HttpOnly, ck.SameSite, ck.Secure, ck.Path, secure)
					}
					cookie = ck.Name + "=" + ck.Value
				}
			}
			send("POST", "/login", "application/x-www-form-urlencoded", "user=alice")
			send("POST", "/subscribe", "", "")
			send("POST", "/logout", "", "")
			if seen < 2 {
				t.Errorf("%d session cookies seen; want those of sign-in and logout", seen)
			}
		})
	}
}

// TestNginxPublisherNotExposed adds to TestNginxRefusals (GET, POST and
// DELETE of /pub/<channel> from another address): no other method, path
// spelling, forwarding header or request form reaches the publisher from
// outside, for a session channel or the broadcast channel, and a listener's
// WebSocket cannot publish either. The channel keeps its messages.
func TestNginxPublisherNotExposed(t *testing.T) {
	s := startNginxSite(t)
	alice := newBrowser(t, s.URL)
	alice.mustLogin("alice")
	sub := alice.subscribe()
	ch := sub.Channel
	bc := sessionpush.SuggestedBroadcastChannel
	want := func() int {
		info, err := s.relay.Info(t.Context(), ch)
		if err != nil {
			t.Fatalf("alice's channel: %v", err)
		}
		return info.Messages
	}
	before := want()
	addr := strings.TrimPrefix(s.URL, "http://")

	// Raw requests from 127.0.0.2, so that nginx sees what is written.
	send := func(req string) (int, string) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Content-Type")
	}
	const body = "intruder"
	for _, target := range []string{"/pub/" + ch, "/pub/" + bc} {
		for _, tc := range []struct{ method, path, extra string }{
			{"PUT", target, ""},
			{"POST", target, "X-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nForwarded: for=127.0.0.1\r\n"},
			{"POST", "/" + target, ""},
			{"POST", "/sub/.." + target, ""},
			{"POST", "/sub/%2e%2e" + target, ""},
			{"POST", strings.Replace(target, "/pub/", "/%70ub/", 1), ""},
			{"POST", target + "?x=1", ""},
			{"POST", "http://127.0.0.1" + target, ""}, // absolute form
			{"POST", "/./" + target[1:], ""},
		} {
			req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
				tc.method, tc.path, tc.extra, len(body), body)
			status, _ := send(req)
			t.Logf("%s %s from 127.0.0.2 (%q): %d", tc.method, tc.path, tc.extra, status)
			if status < 400 || status >= 500 {
				t.Errorf("%s %s from 127.0.0.2 (%q): %d; want a 4xx", tc.method, tc.path, tc.extra, status)
			}
		}
	}
	// nginx sets X-Channel-Id for /authorize itself: a listener's own
	// header naming its channel does not let it into bob's.
	bob := newBrowser(t, s.URL)
	bob.mustLogin("bob")
	bobs := bob.subscribe()
	for _, hdr := range [][]string{
		{sessionpush.AuthorizeHeader, ch},
		{sessionpush.AuthorizeHeader, ch + ", " + bobs.Channel},
	} {
		if resp, _ := alice.poll(bobs.URL, append([]string{"Last-Event-ID", bobs.Cursor}, hdr...)...); resp.StatusCode != http.StatusForbidden {
			t.Errorf("alice on bob's channel with %q: %s; want 403", hdr, resp.Status)
		}
	}

	// The listeners' own locations take no publishing method.
	for _, path := range []string{sub.URL, "/sub/" + bc} {
		for _, method := range []string{"POST", "PUT", "DELETE"} {
			req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", method, path, len(body), body)
			if status, _ := send(req); status < 400 || status >= 500 {
				t.Errorf("%s %s: %d; want a 4xx", method, path, status)
			}
		}
	}

	// A listener's WebSocket sends a message, then a ping: once the pong
	// is back (or the socket closed), Nchan has handled the message.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	hdr := http.Header{"Origin": {s.URL}}
	for _, c := range alice.c.Jar.Cookies(mustParse(t, s.URL)) {
		hdr.Add("Cookie", c.Name+"="+c.Value)
	}
	conn, resp, err := websocket.Dial(ctx, "ws://"+addr+sub.URL, &websocket.DialOptions{HTTPHeader: hdr, Subprotocols: []string{"ws+meta.nchan"}})
	if err != nil {
		t.Fatalf("alice's WebSocket: %v %v", resp, err)
	}
	defer conn.CloseNow()
	frames := make(chan string, 16)
	go func() {
		defer close(frames)
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				return
			}
			frames <- string(b)
		}
	}()
	if err := conn.Write(ctx, websocket.MessageText, []byte(body)); err == nil {
		err = conn.Ping(ctx) // an error means Nchan closed the socket: handled too
		t.Logf("ping after the listener's message: %v", err)
	}
	if got := want(); got != before {
		t.Errorf("alice's channel has %d messages after the requests from outside; want %d", got, before)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	for f := range frames {
		if strings.Contains(f, body) {
			t.Errorf("frame %q from the relay carries what the listener sent", f)
		}
	}
	if _, err := s.relay.Info(t.Context(), bc); err == nil {
		t.Errorf("the broadcast channel exists: the requests from outside opened it")
	}
}

func mustParse(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestNginxSizeLimits: through the shipped config, a body over 64 KiB gets
// 413 from nginx before the app or Nchan reads it, on the app's routes and
// on the publisher; headers over nginx's buffers get a 4xx; the worker
// survives both.
func TestNginxSizeLimits(t *testing.T) {
	s := startNginxSite(t)
	worker := s.WorkerPID()
	alice := newBrowser(t, s.URL)
	alice.mustLogin("alice")
	sub := alice.subscribe()
	before, err := s.relay.Info(t.Context(), sub.Channel)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("1", 64<<10+1)
	for _, path := range []string{"/push", "/broadcast", "/subscribe"} {
		if resp, _ := alice.postJSON(path, big); resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("POST %s of %d bytes: %s; want 413", path, len(big), resp.Status)
		}
	}
	if status, err := publish(pubURL(s.Nginx)+"/pub/"+sub.Channel, big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("publish of %d bytes from 127.0.0.1: %d %v; want 413", len(big), status, err)
	}
	for _, path := range []string{sub.URL, "/subscribe", "/pub/" + sub.Channel} {
		status, err := request(guardCase{method: "GET", url: s.URL + path, header: []string{"Cookie", "junk=" + strings.Repeat("a", 64<<10)}})
		if status < 400 || status >= 500 {
			t.Errorf("GET %s with a 64 KiB header: %d %v; want a 4xx", path, status, err)
		}
	}
	if now := s.WorkerPID(); now != worker {
		t.Errorf("nginx worker: PID %d, was %d\n%s", now, worker, s.ErrorLog())
	}
	if after, err := s.relay.Info(t.Context(), sub.Channel); err != nil || after.Messages != before.Messages {
		t.Errorf("alice's channel: %+v, %v; want %d messages as before", after, err, before.Messages)
	}
}

// TestNginxNoChannelEnumeration: through the shipped config, another
// session's open channel and a channel never opened get the same answer
// (status, headers but Date, body) on every transport, with a session and
// without: nchan_authorize_request refuses both before Nchan's own
// existing-channels-only check could tell them apart.
func TestNginxNoChannelEnumeration(t *testing.T) {
	s := startNginxSite(t)
	alice, bob := newBrowser(t, s.URL), newBrowser(t, s.URL)
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	sub := alice.subscribe()
	bob.subscribe()
	never := "/sub/" + uuid.NewString()
	answer := func(b *browser, path string, hdr []string) string {
		resp, body := b.do("GET", path, "", "", hdr...)
		h := resp.Header.Clone()
		h.Del("Date")
		return fmt.Sprintf("%d %v %q", resp.StatusCode, h, body)
	}
	for name, hdr := range map[string][]string{
		"long-poll":   {"Last-Event-ID", sub.Cursor},
		"EventSource": {"Accept", "text/event-stream"},
		"WebSocket":   {"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
	} {
		for who, b := range map[string]*browser{"bob": bob, "no session": newBrowser(t, s.URL)} {
			foreign, unknown := answer(b, sub.URL, hdr), answer(b, never, hdr)
			if foreign != unknown || !strings.HasPrefix(foreign, "403 ") {
				t.Errorf("%s, %s: alice's channel: %s\nnever opened: %s\nwant the same 403", who, name, foreign, unknown)
			}
		}
	}
}

// TestNginxCrossSiteWebSocket: through the shipped config, a WebSocket
// handshake with the owner's cookie but another site's Origin gets 403
// (nchan_access_control_allow_origin), and no listener is added; from the
// page's own origin it is let in.
func TestNginxCrossSiteWebSocket(t *testing.T) {
	s := startNginxSite(t)
	alice := newBrowser(t, s.URL)
	alice.mustLogin("alice")
	sub := alice.subscribe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(origin string) (*websocket.Conn, *http.Response, error) {
		hdr := http.Header{"Origin": {origin}}
		for _, c := range alice.c.Jar.Cookies(mustParse(t, s.URL)) {
			hdr.Add("Cookie", c.Name+"="+c.Value)
		}
		return websocket.Dial(ctx, "ws://"+strings.TrimPrefix(s.URL, "http://")+sub.URL,
			&websocket.DialOptions{HTTPHeader: hdr, Subprotocols: []string{"ws+meta.nchan"}})
	}
	conn, resp, err := dial("http://evil.example")
	if err == nil {
		conn.CloseNow()
		t.Fatal("cross-site WebSocket handshake accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site WebSocket handshake: %v, %v; want 403", resp, err)
	}
	if info, err := s.relay.Info(ctx, sub.Channel); err != nil || info.Listeners != 0 {
		t.Fatalf("channel after the refused handshake: %+v, %v; want no listener", info, err)
	}
	conn, _, err = dial(s.URL)
	if err != nil {
		t.Fatalf("same-origin handshake: %v", err)
	}
	conn.CloseNow()
}
