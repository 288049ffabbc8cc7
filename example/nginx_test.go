package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
)

// The shipped config, and the addresses in it that the tests replace by
// free ports.
const (
	shippedConf      = "nginx/nginx.conf"
	shippedListen    = "127.0.0.1:8081" // nginx, public
	shippedPublisher = "127.0.0.1:8091" // nginx, the publisher's loopback server
	shippedUpstream  = "127.0.0.1:8080" // the app
)

// futureIMS is an If-Modified-Since far in the future, half of the input
// that aborts an unguarded Nchan 1.3.6 worker (docs/nginx.md, "The guard").
const futureIMS = "Fri, 01 Jan 2100 00:00:00 GMT"

// nginxConf returns the shipped config as a template for
// servers.StartNginx: nginx on {{.Addr}}, its publisher server on
// {{port "pub"}} (see pubURL), the app on {{port "app"}}.
func nginxConf(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, s := range []string{"listen " + shippedListen + ";", "listen " + shippedPublisher + ";", "server " + shippedUpstream + ";"} {
		if strings.Count(conf, s) != 1 {
			t.Fatalf("%s: want one %q: the tests replace the addresses", shippedConf, s)
		}
	}
	if strings.Contains(conf, "{{") {
		t.Fatalf("%s: has {{; the tests render it as a template", shippedConf)
	}
	conf = strings.ReplaceAll(conf, shippedListen, "{{.Addr}}")
	conf = strings.ReplaceAll(conf, shippedPublisher, `127.0.0.1:{{port "pub"}}`)
	return strings.ReplaceAll(conf, shippedUpstream, `127.0.0.1:{{port "app"}}`)
}

// pubURL is the base URL of n's publisher server ({{port "pub"}}).
func pubURL(n *servers.Nginx) string { return fmt.Sprintf("http://127.0.0.1:%d", n.Ports["pub"]) }

// startNginx starts nginx with conf (from nginxConf, maybe edited), ready
// once it answers (it binds both servers' ports before it does).
func startNginx(t *testing.T, conf string) *servers.Nginx {
	t.Helper()
	n := servers.StartNginxWith(t, conf, servers.NginxOptions{ReadyPath: "/pub/" + uuid.NewString()})
	// Keep-alive connections of the test's clients would hold up nginx's
	// graceful stop. Cleanups run last in first out: this one before it.
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	return n
}

// nginxSite is the example as nginx/nginx.conf deploys it: nginx in front
// of the app, which publishes to Nchan.
type nginxSite struct {
	*servers.Nginx
	relay *nchan.Client // the app's relay
}

// startNginxSite starts nginx with the shipped config and the app behind
// it, as -publish-url and -subscribe-url make it (TestNginxRun runs the
// program itself). The test owns the relay's connections: nginx's graceful
// stop would wait for one that a dial race of the Transport left unused.
func startNginxSite(t *testing.T) *nginxSite {
	t.Helper()
	return startNginxSiteWith(t, nginxConf(t), nil)
}

// startNginxSiteWith is startNginxSite with conf (from nginxConf, maybe
// edited), and mod, if not nil, adjusting the Manager's Config.
func startNginxSiteWith(t *testing.T, conf string, mod func(*sessionpush.Config)) *nginxSite {
	t.Helper()
	n := startNginx(t, conf)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	relay, err := nchan.New(pubURL(n)+"/pub/{channel}", nchan.Options{HTTPClient: &http.Client{Transport: tr}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	store := newSessionStore(false)
	cfg := sessionpush.Config{Sessions: store, Relay: relay, ListenURL: "/sub/{channel}", Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	mgr, err := sessionpush.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", n.Ports["app"]))
	if err != nil {
		t.Fatal(err)
	}
	app := httptest.NewUnstartedServer(newApp(mgr, store, log, appConfig{Admin: "alice"}))
	app.Listener.Close()
	app.Listener = ln
	app.Start()
	t.Cleanup(app.Close)
	return &nginxSite{Nginx: n, relay: relay}
}

// TestNginxRun runs the program with the flags that nginx/nginx.conf's
// header gives, behind nginx: /subscribe names nginx's /sub, where a push
// arrives; the app's own /sub answers 404.
func TestNginxRun(t *testing.T) {
	n := startNginx(t, nginxConf(t))
	app := startProgram(t, "-addr", fmt.Sprintf("127.0.0.1:%d", n.Ports["app"]),
		"-publish-url", pubURL(n)+"/pub/{channel}", "-subscribe-url", "/sub/{channel}")
	b := newBrowser(t, n.URL)
	b.mustLogin("alice")
	sub := b.subscribe()
	if sub.URL != "/sub/"+sub.Channel || sub.Cursor == "" {
		t.Fatalf("subscription %+v; want url /sub/<channel> and a cursor", sub)
	}
	es := b.listen(sub.URL + "?last_event_id=" + url.QueryEscape(sub.Cursor))
	if resp, body := b.postJSON("/push", `"hi"`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push: %s %s", resp.Status, body)
	}
	if _, data := es.next(); data != `"hi"` {
		t.Errorf("EventSource through nginx: %q; want \"hi\"", data)
	}
	if resp, _ := newBrowser(t, app.URL).poll(sub.URL); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the app's own GET %s: %s; want 404 (nginx serves it)", sub.URL, resp.Status)
	}
}

// TestNginxRunBroadcastChannel runs the program with -broadcast-channel
// behind the shipped config: the exact-match location of the broadcast
// channel lets more listeners in than a session channel's cap (10), and
// /broadcast reaches them with one publish.
func TestNginxRunBroadcastChannel(t *testing.T) {
	id := sessionpush.SuggestedBroadcastChannel
	n := startNginx(t, nginxConf(t))
	startProgram(t, "-addr", fmt.Sprintf("127.0.0.1:%d", n.Ports["app"]),
		"-publish-url", pubURL(n)+"/pub/{channel}", "-subscribe-url", "/sub/{channel}", "-broadcast-channel", id, "-admin", "alice")
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	nc, err := nchan.New(pubURL(n)+"/pub/{channel}", nchan.Options{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	site := &nginxSite{Nginx: n, relay: nc}
	b := newBrowser(t, n.URL)
	b.mustLogin("alice")
	sub := b.subscribe()
	if sub.Broadcast == nil || sub.Broadcast.URL != "/sub/"+id {
		t.Fatalf("subscription %+v: broadcast %+v, want url /sub/%s", sub, sub.Broadcast, id)
	}
	var streams []*stream
	for range 11 {
		streams = append(streams, b.listen(sub.Broadcast.URL+"?last_event_id="+url.QueryEscape(sub.Broadcast.Cursor)))
	}
	site.waitForSubscribers(t, id, 11)
	if resp, body := b.postJSON("/broadcast", `"all"`); resp.StatusCode != http.StatusOK || body != `{"channels":1,"listeners":11}`+"\n" {
		t.Fatalf("POST /broadcast: %s %q, want {\"channels\":1,\"listeners\":11}", resp.Status, body)
	}
	for i, es := range streams {
		if _, data := es.next(); data != `"all"` {
			t.Errorf("broadcast listener %d through nginx: %q", i, data)
		}
	}
	if resp, _ := newBrowser(t, n.URL).poll(sub.Broadcast.URL); resp.StatusCode != http.StatusForbidden {
		t.Errorf("broadcast channel without a session: %s, want 403", resp.Status)
	}
}

// waitForSubscribers waits until Nchan counts n listeners on the channel.
func (s *nginxSite) waitForSubscribers(t *testing.T, channel string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		info, err := s.relay.Info(t.Context(), channel)
		if err != nil {
			t.Fatal(err)
		}
		if info.Listeners == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("channel %s: %d subscribers on Nchan; want %d", channel, info.Listeners, n)
		}
	}
}

// stream is an EventSource response, read event by event.
type stream struct {
	t *testing.T
	r *bufio.Reader
}

// listen opens an EventSource stream on path with the header pairs; it
// fails the test unless the answer is a stream. The stream is closed when
// the test ends, and reads fail after 20 s.
func (b *browser) listen(path string, header ...string) *stream {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	b.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", b.base+path, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b.t.Fatalf("EventSource on %s: %s %q", path, resp.Status, resp.Header.Get("Content-Type"))
	}
	return &stream{t: b.t, r: bufio.NewReader(resp.Body)}
}

// next returns the next event's id and data, skipping comments.
func (s *stream) next() (id, data string) {
	s.t.Helper()
	var lines []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("EventSource: %v after %q", err, line)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "" && lines != nil:
			return id, strings.Join(lines, "\n")
		case strings.HasPrefix(line, "id: "):
			id = line[len("id: "):]
		case strings.HasPrefix(line, "data: "):
			lines = append(lines, line[len("data: "):])
		}
	}
}

// rest reads the stream to its end.
func (s *stream) rest() string {
	s.t.Helper()
	b, err := io.ReadAll(s.r)
	if err != nil {
		s.t.Errorf("EventSource: reading to the end: %v", err)
	}
	return string(b)
}

// polled is the outcome of a long-poll made in another goroutine.
type polled struct {
	status int
	body   string
	err    error
}

// pollAsync long-polls path with the header pairs in a goroutine.
func (b *browser) pollAsync(path string, header ...string) <-chan polled {
	done := make(chan polled, 1)
	req, err := http.NewRequestWithContext(b.t.Context(), "GET", b.base+path, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	go func() {
		resp, err := b.c.Do(req)
		if err != nil {
			done <- polled{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- polled{status: resp.StatusCode, body: string(body), err: err}
	}()
	return done
}

// TestNginxFlow runs the example behind nginx/nginx.conf: sign in,
// /subscribe, listen through nginx by EventSource and by long-poll, push,
// broadcast, and sign out, which ends both listeners.
func TestNginxFlow(t *testing.T) {
	s := startNginxSite(t)
	alice, bob := newBrowser(t, s.URL), newBrowser(t, s.URL)
	alice.mustLogin("alice")
	bob.mustLogin("bob")

	sub := alice.subscribe()
	if !uuidV4.MatchString(sub.Channel) || sub.URL != "/sub/"+sub.Channel || sub.Cursor == "" {
		t.Fatalf("subscription %+v; want a UUID channel, url /sub/<channel>, a cursor", sub)
	}

	es := alice.listen(sub.URL + "?last_event_id=" + url.QueryEscape(sub.Cursor))
	first, second := `{"text":"hi","n":1}`, `{"text":"again","n":2}`
	for _, m := range []string{first, second} {
		if resp, body := alice.postJSON("/push", m); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("push %s: %s %s; want 204", m, resp.Status, body)
		}
	}
	id1, data1 := es.next()
	id2, data2 := es.next()
	if data1 != first || data2 != second || id1 == "" || id1 == id2 {
		t.Errorf("EventSource: %q %q, %q %q; want both pushes with distinct ids", id1, data1, id2, data2)
	}

	// Long-poll from the cursor, then walk with Last-Modified and Etag.
	resp, body := alice.poll(sub.URL, "Last-Event-ID", sub.Cursor)
	if resp.StatusCode != http.StatusOK || body != first || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("long-poll from the cursor: %s %q %q; want 200 %s as application/json", resp.Status, resp.Header.Get("Content-Type"), body, first)
	}
	lm, etag := resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")
	resp, body = alice.poll(sub.URL, "If-Modified-Since", lm, "If-None-Match", etag)
	if resp.StatusCode != http.StatusOK || body != second {
		t.Fatalf("long-poll walk: %s %q; want 200 %s", resp.Status, body, second)
	}
	lm, etag = resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")

	bobSub := bob.subscribe()
	news := `{"news":"hello, all"}`
	if resp, body := alice.postJSON("/broadcast", news); resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != `{"channels":2,"listeners":1}` {
		t.Fatalf("broadcast: %s %s; want 200 {\"channels\":2,\"listeners\":1}", resp.Status, body)
	}
	if _, data := es.next(); data != news {
		t.Errorf("alice's EventSource after the broadcast: %q; want %s", data, news)
	}
	if resp, body := bob.poll(bobSub.URL, "Last-Event-ID", bobSub.Cursor); resp.StatusCode != http.StatusOK || body != news {
		t.Errorf("bob's long-poll after the broadcast: %s %q; want 200 %s", resp.Status, body, news)
	}

	if resp, body := alice.poll(sub.URL, "If-Modified-Since", lm, "If-None-Match", etag); resp.StatusCode != http.StatusOK || body != news {
		t.Fatalf("long-poll walk to the broadcast: %s %q; want 200 %s", resp.Status, body, news)
	}

	// A long-poll without an ID waits for the next message
	// (nchan_subscriber_first_message newest); logout ends it and the stream.
	waiting := alice.pollAsync(sub.URL)
	s.waitForSubscribers(t, sub.Channel, 2) // the stream and the long-poll
	if resp, _ := alice.do("POST", "/logout", "", ""); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %s; want 303", resp.Status)
	}
	if rest := es.rest(); !strings.HasSuffix(rest, ":410: 410 Gone\n\n") {
		t.Errorf("EventSource after logout: %q; want it to end with :410: 410 Gone", rest)
	}
	if p := <-waiting; p.err != nil || p.status != http.StatusGone {
		t.Errorf("waiting long-poll after logout: %d %v; want 410", p.status, p.err)
	}
	if resp, _ := alice.do("POST", "/subscribe", "", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/subscribe after logout: %s; want 401", resp.Status)
	}
}

// TestNginxRefusals checks what nginx/nginx.conf refuses on real Nchan.
func TestNginxRefusals(t *testing.T) {
	s := startNginxSite(t)
	alice, bob := newBrowser(t, s.URL), newBrowser(t, s.URL)
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	sub := alice.subscribe()
	bob.subscribe()
	if resp, _ := alice.postJSON("/push", `"hi"`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push: %s", resp.Status)
	}

	// Listeners refused: by nchan_authorize_request (the app; a channel
	// never opened is unknown to it too, TestNginxRestart shows
	// existing-channels-only alone), by the location regex, by the CORS
	// origin.
	for name, tc := range map[string]struct {
		b      *browser
		path   string
		header []string
		want   int
	}{
		"another session's cookie": {bob, sub.URL, nil, http.StatusForbidden},
		"no cookie":                {newBrowser(t, s.URL), sub.URL, nil, http.StatusForbidden},
		"never opened":             {alice, "/sub/" + uuid.NewString(), nil, http.StatusForbidden},
		"not a channel id":         {alice, "/sub/" + strings.ToUpper(sub.Channel), nil, http.StatusNotFound},
		"another origin":           {alice, sub.URL, []string{"Origin", "http://evil.example"}, http.StatusForbidden},
		"authorize is internal":    {alice, "/authorize", []string{sessionpush.AuthorizeHeader, sub.Channel}, http.StatusNotFound},
	} {
		// From the cursor: a long-poll let in gets "hi" at once.
		header := append([]string{"Last-Event-ID", sub.Cursor}, tc.header...)
		if resp, _ := tc.b.poll(tc.path, header...); resp.StatusCode != tc.want {
			t.Errorf("%s: GET %s: %s; want %d", name, tc.path, resp.Status, tc.want)
		}
	}
	if resp, body := alice.poll(sub.URL, "Last-Event-ID", sub.Cursor, "Origin", s.URL); resp.StatusCode != http.StatusOK || body != `"hi"` {
		t.Errorf("long-poll from the page's origin: %s %q; want 200 \"hi\"", resp.Status, body)
	}

	// nchan_max_channel_subscribers: 10 listeners, then 403.
	for range 10 {
		alice.listen(sub.URL)
	}
	if resp, _ := alice.poll(sub.URL, "Accept", "text/event-stream"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("11th listener: %s; want 403", resp.Status)
	}

	// The publisher answers 127.0.0.1 only (loopback takes any 127/8 source).
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 5 * time.Second}
	}
	for _, tc := range []struct {
		from, method string
		want         int
	}{
		{"127.0.0.2", "GET", http.StatusForbidden},
		{"127.0.0.2", "POST", http.StatusForbidden},
		{"127.0.0.2", "DELETE", http.StatusForbidden},
		{"127.0.0.1", "GET", http.StatusOK},
	} {
		c := from(tc.from)
		req, _ := http.NewRequest(tc.method, pubURL(s.Nginx)+"/pub/"+sub.Channel, strings.NewReader("intruder"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s /pub from %s: %v", tc.method, tc.from, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.CloseIdleConnections()
		if resp.StatusCode != tc.want {
			t.Errorf("%s /pub/<channel> from %s: %s %q; want %d", tc.method, tc.from, resp.Status, body, tc.want)
		}
	}
	info, err := s.relay.Info(t.Context(), sub.Channel)
	if err != nil || info.Messages != 2 { // the opening message and "hi"
		t.Errorf("channel after the refused requests: %+v, %v; want it open with 2 messages", info, err)
	}
	if resp, _ := alice.postJSON("/push", strings.Repeat("1", maxBody)); resp.StatusCode != http.StatusNoContent {
		t.Errorf("push of %d bytes (the example's cap): %s; want 204", maxBody, resp.Status)
	}
	if resp, _ := alice.postJSON("/push", strings.Repeat("1", maxBody+1)); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("push of %d bytes (over the example's cap): %s; want 413", maxBody+1, resp.Status)
	}
	// The publisher takes the Manager's limit (client_max_body_size 64k).
	if _, err := s.relay.Publish(t.Context(), sub.Channel, relay.Message{Body: bytes.Repeat([]byte("1"), 64<<10)}); err != nil {
		t.Errorf("publish of %d bytes (MaxMessageSize, client_max_body_size): %v", 64<<10, err)
	}
}

// TestNginxRestart restarts nginx, which empties Nchan's memory store while
// the app still counts alice's channel open: authorize lets her in, but
// nchan_subscribe_existing_channels_only refuses her (403), and /subscribe
// then binds a new channel, as the JS client does after a 403.
func TestNginxRestart(t *testing.T) {
	s := startNginxSite(t)
	alice := newBrowser(t, s.URL)
	alice.mustLogin("alice")
	sub := alice.subscribe()
	s.Stop()
	s.Start()

	if resp, _ := alice.poll(sub.URL, "Last-Event-ID", sub.Cursor); resp.StatusCode != http.StatusForbidden {
		t.Errorf("long-poll on a channel that Nchan lost: %s; want 403", resp.Status)
	}
	next := alice.subscribe()
	if next.Channel == sub.Channel {
		t.Fatalf("/subscribe after the restart: the lost channel %s again", sub.Channel)
	}
	if resp, body := alice.postJSON("/push", `"back"`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push: %s %s", resp.Status, body)
	}
	if resp, body := alice.poll(next.URL, "Last-Event-ID", next.Cursor); resp.StatusCode != http.StatusOK || body != `"back"` {
		t.Errorf("long-poll on the new channel: %s %q; want 200 \"back\"", resp.Status, body)
	}
}

// guardCase is one request to nginx and the status it should get.
type guardCase struct {
	name, method, url string
	header            []string
	want              int
}

// crashInputs are the requests that abort an unguarded Nchan 1.3.6 worker,
// before nchan_authorize_request runs: a message ID with a multiplexed tag
// out of range (here 1795742138 read as a 16-bit tag, or -5) in each place
// Nchan reads one, for the subscriber URL sub.
func crashInputs(sub string) []guardCase {
	const id = "1795742138:0,-5,[0]"
	return []guardCase{
		{"If-None-Match", "GET", sub, []string{"If-Modified-Since", futureIMS, "If-None-Match", "1795742138:1,[0],-"}, http.StatusBadRequest},
		{"Last-Event-ID", "GET", sub, []string{"Last-Event-ID", id}, http.StatusBadRequest},
		{"?last_event_id=", "GET", sub + "?last_event_id=" + url.QueryEscape(id), nil, http.StatusBadRequest},
	}
}

// request sends one request with a 3 s timeout, on a connection of its
// own, and returns the status, or an error when no answer came.
func request(tc guardCase) (int, error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequest(tc.method, tc.url, nil)
	if err != nil {
		return 0, err
	}
	for i := 0; i+1 < len(tc.header); i += 2 {
		req.Header.Set(tc.header[i], tc.header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestNginxGuard sends the requests of docs/nginx.md ("The guard") through the
// shipped config: each gets a quick 4xx, and the worker and its channels
// survive; what real clients send still passes.
func TestNginxGuard(t *testing.T) {
	s := startNginxSite(t)
	worker := s.WorkerPID()
	alice := newBrowser(t, s.URL)
	alice.mustLogin("alice")
	sub := alice.subscribe()
	ch, pub := s.URL+sub.URL, pubURL(s.Nginx)+"/pub/"+sub.Channel
	other := s.URL + "/sub/" + uuid.NewString()

	cases := append(crashInputs(ch), []guardCase{
		{"HEAD subscriber", "HEAD", ch, nil, http.StatusMethodNotAllowed},
		{"PROPFIND subscriber", "PROPFIND", ch, nil, http.StatusMethodNotAllowed},
		{"HEAD publisher", "HEAD", pub, nil, http.StatusMethodNotAllowed},
		{"PROPFIND publisher", "PROPFIND", pub, nil, http.StatusMethodNotAllowed},
		{"active part '-'", "GET", other, []string{"If-Modified-Since", futureIMS, "If-None-Match", "[-],0,0"}, http.StatusBadRequest},
		{"multiplexed tag of 5 digits", "GET", other, []string{"If-Modified-Since", futureIMS, "If-None-Match", "[40000],0,0"}, http.StatusBadRequest},
		{"?last_event_id= unescaped", "GET", other + "?last_event_id=1795742138:0,-5,[0]", nil, http.StatusBadRequest},
		{"?last_event_id= with '-' escaped", "GET", other + "?last_event_id=1795742138%3A0%2C%2D5%2C%5B0%5D", nil, http.StatusBadRequest},
		// What passes: Nchan's CORS preflight, and the app, whatever it is sent.
		{"CORS preflight", "OPTIONS", ch, []string{"Origin", s.URL, "Access-Control-Request-Method", "GET"}, http.StatusOK},
		{"HEAD to the app", "HEAD", s.URL + "/", nil, http.StatusOK},
		{"If-None-Match to the app", "GET", s.URL + "/client.js", []string{"If-None-Match", `"x"`}, http.StatusOK},
	}...)
	for _, tc := range cases {
		if status, err := request(tc); status != tc.want {
			t.Errorf("%s: %d, %v; want %d", tc.name, status, err, tc.want)
		}
	}

	// A long-poll from ?last_event_id= and a walk with If-Modified-Since
	// and If-None-Match pass.
	for _, m := range []string{`"one"`, `"two"`} {
		if resp, body := alice.postJSON("/push", m); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("push: %s %s", resp.Status, body)
		}
	}
	resp, body := alice.poll(sub.URL+"?last_event_id="+url.QueryEscape(sub.Cursor), "Origin", s.URL)
	if resp.StatusCode != http.StatusOK || body != `"one"` {
		t.Fatalf("long-poll from ?last_event_id=<cursor>: %s %q; want 200 \"one\"", resp.Status, body)
	}
	resp, body = alice.poll(sub.URL, "If-Modified-Since", resp.Header.Get("Last-Modified"), "If-None-Match", resp.Header.Get("Etag"))
	if resp.StatusCode != http.StatusOK || body != `"two"` {
		t.Errorf("long-poll walk: %s %q; want 200 \"two\"", resp.Status, body)
	}

	if now := s.WorkerPID(); now != worker {
		t.Errorf("nginx worker: PID %d, was %d: it crashed\n%s", now, worker, s.ErrorLog())
	}
	if _, err := s.relay.Info(t.Context(), sub.Channel); err != nil {
		t.Errorf("alice's channel after the guarded requests: %v", err)
	}
}

// TestNginxGuardMultiplexed adds a multiplexed subscriber location to the
// shipped config (which has none) and walks Nchan's own multiplexed IDs
// through the guard: they pass. (Multiplexed locations have crashes of their
// own in Nchan 1.3.6 that no header pattern can guard, so the config ships
// none.)
func TestNginxGuardMultiplexed(t *testing.T) {
	const uuidRE = `[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`
	conf := nginxConf(t)
	fallback := "    location ~ ^/(pub|sub)/ {"
	if !strings.Contains(conf, fallback) {
		t.Fatalf("%s: no %q to insert a multiplexed location before", shippedConf, fallback)
	}
	conf = strings.Replace(conf, fallback, `    location ~ "^/sub/(`+uuidRE+`),(`+uuidRE+`)$" {
      nchan_subscriber;
      nchan_channel_id $1 $2;
    }
`+fallback, 1)
	n := startNginx(t, conf)
	worker := n.WorkerPID()
	a, c := uuid.NewString(), uuid.NewString()
	for _, m := range []struct{ channel, body string }{{a, "a1"}, {c, "c1"}, {a, "a2"}} {
		if status, err := publish(pubURL(n)+"/pub/"+m.channel, m.body); status != http.StatusAccepted {
			t.Fatalf("POST %s to %s: %d %v", m.body, m.channel, status, err)
		}
	}
	multi := "/sub/" + a + "," + c
	b := newBrowser(t, n.URL)

	var got, etags []string
	var header []string
	for range 3 {
		resp, body := b.do("GET", multi, "", "", header...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("multiplexed long-poll with %q: %s", header, resp.Status)
		}
		got, etags = append(got, body), append(etags, resp.Header.Get("Etag"))
		header = []string{"If-Modified-Since", resp.Header.Get("Last-Modified"), "If-None-Match", resp.Header.Get("Etag")}
	}
	if strings.Join(got, " ") != "a1 c1 a2" {
		t.Errorf("multiplexed long-poll walk: %q (Etags %q); want a1 c1 a2", got, etags)
	}
	for _, e := range etags {
		if !strings.Contains(e, ",") || !strings.Contains(e, "[") {
			t.Errorf("Etag %q is not a multiplexed one", e)
		}
	}

	// EventSource: ids such as 1795749474:[0],-, and resuming after the
	// first one by header, query, or unescaped query.
	first, _ := b.listen(multi).next()
	for name, es := range map[string]*stream{
		"Last-Event-ID":             b.listen(multi, "Last-Event-ID", first),
		"?last_event_id=":           b.listen(multi + "?last_event_id=" + url.QueryEscape(first)),
		"?last_event_id= unescaped": b.listen(multi + "?last_event_id=" + first),
	} {
		if _, data := es.next(); data != "c1" {
			t.Errorf("EventSource from %s %q: %q; want c1", name, first, data)
		}
	}
	if now := n.WorkerPID(); now != worker {
		t.Errorf("nginx worker: PID %d, was %d: it crashed\n%s", now, worker, n.ErrorLog())
	}
}

// publish POSTs body to a publisher URL from 127.0.0.1.
func publish(u, body string) (int, error) {
	resp, err := http.Post(u, "text/plain", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestNginxUnguarded removes the guard from the shipped config and checks
// that the inputs TestNginxGuard sends are real: HEAD gets no answer, and
// each crash input aborts the worker and wipes the channels.
func TestNginxUnguarded(t *testing.T) {
	guard := regexp.MustCompile(`(?m)^[ \t]*if \(\$nchan_bad_(method|id)\)[^\n]*\n`)
	conf := nginxConf(t)
	if m := guard.FindAllString(conf, -1); len(m) != 3 {
		t.Fatalf("%s: guard lines %q; want the ifs of $nchan_bad_method and $nchan_bad_id, and $nchan_bad_method in the publisher server", shippedConf, m)
	}
	n := startNginx(t, guard.ReplaceAllString(conf, ""))
	channel := uuid.NewString()
	sub := n.URL + "/sub/" + channel

	for _, method := range []string{"HEAD", "PROPFIND"} {
		if status, err := request(guardCase{method: method, url: sub}); err == nil {
			t.Errorf("%s without the guard: %d; want no answer (Nchan 1.3.6 never answers it)", method, status)
		}
	}
	for _, tc := range crashInputs(sub) {
		if status, err := publish(pubURL(n)+"/pub/"+channel, "kept?"); status != http.StatusAccepted {
			t.Fatalf("POST: %d %v", status, err)
		}
		worker := n.WorkerPID()
		if status, err := request(tc); err == nil {
			t.Errorf("crash by %s without the guard: %d; want no answer", tc.name, status)
		}
		for deadline := time.Now().Add(5 * time.Second); n.WorkerPID() == worker; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("crash by %s without the guard: worker %d still there", tc.name, worker)
			}
		}
		if status, err := request(guardCase{method: "GET", url: pubURL(n) + "/pub/" + channel}); status != http.StatusNotFound {
			t.Errorf("channel after the crash by %s: %d %v; want 404 (wiped)", tc.name, status, err)
		}
	}
	if !strings.Contains(n.ErrorLog(), "msgtag_to_strptr: Assertion") {
		t.Errorf("error.log lacks the assertion of msgtag_to_strptr:\n%s", n.ErrorLog())
	}
}

// TestNginxConfigTest runs `nginx -t` on the shipped file, unedited.
func TestNginxConfigTest(t *testing.T) {
	servers.Require(t, "nginx")
	servers.Require(t, servers.NchanModule)
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx" // servers.Require found it in PATH or here
	}
	conf, err := filepath.Abs(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-t", "-e", "stderr", "-p", t.TempDir(), "-c", conf).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "[warn]") || strings.Contains(string(out), "[emerg]") {
		t.Errorf("nginx -t warns:\n%s", out)
	}
}
