package nchan

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/relay"
)

// nchanConf is the tested Nchan configuration: publisher at
// /pub/<id> (buffering {{.Buffer}} messages) and /pub?id=, /pub_small/<id>
// with a 1 KiB body limit, the subscriber at /sub/<id> for existing
// channels only. With a Redis address every location uses that Redis, with
// Nchan's connect timeout at 500 ms (as in example/nginx/cluster) so that
// it finds a Redis back within a second; a KeepaliveRequests sets nginx's
// keepalive_requests.
const nchanConf = `{{template "main" .}}
error_log error.log info;
events { worker_connections 1024; }
http {
  access_log off;
{{template "temp_paths"}}
  nchan_shared_memory_size 32M;
  client_max_body_size 8m;
  {{with .KeepaliveRequests}}keepalive_requests {{.}};{{end}}
{{if .Redis}}
  upstream nchan_redis {
    nchan_redis_server redis://{{.Redis}};
    nchan_redis_connect_timeout 500ms;
  }
{{end}}
  server {
    listen {{.Addr}};
    location = /ready { return 204; }
    location ~ ^/pub/([^/]+)$ {
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length {{.Buffer}};
      {{if .Redis}}nchan_redis_pass nchan_redis;{{end}}
    }
    location = /pub {
      nchan_publisher;
      nchan_channel_id $arg_id;
      {{if .Redis}}nchan_redis_pass nchan_redis;{{end}}
    }
    location ~ ^/pub_small/([^/]+)$ {
      nchan_publisher;
      nchan_channel_id $1;
      client_max_body_size 1k;
      {{if .Redis}}nchan_redis_pass nchan_redis;{{end}}
    }
    location ~ ^/sub/([^/]+)$ {
      nchan_subscriber;
      nchan_channel_id $1;
      nchan_subscribe_existing_channels_only on;
      {{if .Redis}}nchan_redis_pass nchan_redis;{{end}}
    }
  }
}
`

// nchanVars are the settings of nchanConf.
type nchanVars struct {
	Redis             string // host:port of a Redis for every location; "" for none
	Buffer            int    // nchan_message_buffer_length of /pub/<id>
	KeepaliveRequests int    // nginx's keepalive_requests; 0 for nginx's default
}

func startNchan(t testing.TB, redisAddr string) *servers.Nginx {
	t.Helper()
	return startNchanWith(t, nchanVars{Redis: redisAddr, Buffer: 10})
}

func startNchanWith(t testing.TB, v nchanVars) *servers.Nginx {
	t.Helper()
	return servers.StartNginxWith(t, nchanConf, servers.NginxOptions{
		Vars:      map[string]any{"Redis": v.Redis, "Buffer": v.Buffer, "KeepaliveRequests": v.KeepaliveRequests},
		ReadyPath: "/ready",
	})
}

func newClient(t testing.TB, n *servers.Nginx, path string, opts Options) *Client {
	t.Helper()
	c, err := New(n.URL+path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawInfo is a GET of the publisher endpoint without the Client.
func rawInfo(t *testing.T, n *servers.Nginx, id string) (int, string) {
	t.Helper()
	resp, err := http.Get(n.URL + "/pub/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// subscribe is a raw long-poll or EventSource request to /sub/<id>.
func subscribe(ctx context.Context, n *servers.Nginx, id string, header http.Header, query string) (*http.Response, error) {
	url := n.URL + "/sub/" + id
	if query != "" {
		url += "?" + query
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return http.DefaultClient.Do(req)
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNchanOpenPublishInfoClose(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)

	cursor, err := c.Open(ctx, "life")
	if err != nil {
		t.Fatal(err)
	}
	cid, err := relay.ParseMessageID(cursor)
	if err != nil || cursor == relay.NoCursor {
		t.Fatalf("cursor %q (%v), want the ID of Nchan's empty open message", cursor, err)
	}
	info, err := c.Info(ctx, "life")
	if err != nil || info.Messages != 1 || info.LastMessageID != cursor || info.Listeners != 0 || info.SinceRequest >= 0 {
		t.Fatalf("Info after Open: %+v, %v; want 1 message with ID %s, never requested", info, err, cursor)
	}
	if again, err := c.Open(ctx, "life"); err != nil || again != cursor {
		t.Fatalf("second Open: %q, %v; want the same cursor %q", again, err, cursor)
	}
	if info, _ := c.Info(ctx, "life"); info.Messages != 1 {
		t.Fatalf("second Open published again: %d messages", info.Messages)
	}

	r, err := c.Publish(ctx, "life", relay.Message{Body: []byte("hello"), ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	rid, err := relay.ParseMessageID(r.ID)
	if err != nil || rid.Compare(cid) <= 0 || r.Queued != 2 || r.Listeners != 0 {
		t.Fatalf("receipt %+v (%v), want an ID after %s, 2 queued, no subscriber", r, err, cursor)
	}
	if info, _ := c.Info(ctx, "life"); info.LastMessageID != r.ID || info.Messages != 2 {
		t.Fatalf("Info after Publish: %+v, want last ID %s", info, r.ID)
	}

	if err := c.Close(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Info(ctx, "life"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Info after Close: %v, want ErrChannelNotFound", err)
	}
	if _, err := c.Publish(ctx, "life", relay.Message{Body: []byte("late")}); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Publish after Close: %v, want ErrChannelNotFound", err)
	}
	if err := c.Close(ctx, "life"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("second Close: %v, want ErrChannelNotFound", err)
	}

	// A client that did not see the Close: Nchan's memory store still
	// answers 200 (queued 0), and the client still says not found.
	other := newClient(t, n, "/pub/{channel}", Options{})
	code, body := rawInfo(t, n, "life")
	if code != 200 || !strings.Contains(body, "queued messages: 0") {
		t.Logf("memory store after DELETE: %d %q (the ~10 s grace is over?)", code, body)
	}
	if _, err := other.Info(ctx, "life"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("other client's Info after Close: %v, want ErrChannelNotFound", err)
	}
	if _, err := other.Publish(ctx, "life", relay.Message{Body: []byte("late")}); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("other client's Publish after Close: %v, want ErrChannelNotFound", err)
	}
	if code, body := rawInfo(t, n, "life"); code == 200 && !strings.Contains(body, "queued messages: 0") {
		t.Errorf("the deleted channel was revived: %q", body)
	}
}

func TestNchanCursorSkipsOpenMessageLongPoll(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	cursor, err := c.Open(ctx, "lp")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "lp", relay.Message{Body: []byte("first"), ContentType: "text/plain"}); err != nil {
		t.Fatal(err)
	}

	// Without the cursor a listener gets Nchan's empty open message...
	resp, err := subscribe(ctx, n, "lp", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != "" {
		t.Fatalf("poll without cursor: %d %q, want the empty open message", resp.StatusCode, body)
	}
	// ...with it, the first pushed message.
	resp, err = subscribe(ctx, n, "lp", http.Header{"Last-Event-Id": {cursor}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != "first" {
		t.Fatalf("poll from cursor %s: %d %q, want \"first\"", cursor, resp.StatusCode, body)
	}
	// The walk goes on with If-Modified-Since + If-None-Match, and waits.
	next := make(chan string, 1)
	go func() {
		h := http.Header{"If-Modified-Since": {resp.Header.Get("Last-Modified")}, "If-None-Match": {resp.Header.Get("Etag")}}
		r, err := subscribe(ctx, n, "lp", h, "")
		if err != nil {
			next <- err.Error()
			return
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		next <- fmt.Sprintf("%d %s", r.StatusCode, b)
	}()
	waitSubscribers(t, c, "lp", 1)
	if _, err := c.Publish(ctx, "lp", relay.Message{Body: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	if got := <-next; got != "200 second" {
		t.Fatalf("waiting poll got %q, want \"200 second\"", got)
	}
}

// waitSubscribers polls Info until the channel has want listeners.
func waitSubscribers(t *testing.T, c *Client, id string, want int) {
	t.Helper()
	ctx := ctxTimeout(t, 5*time.Second)
	for {
		info, err := c.Info(ctx, id)
		if err != nil {
			t.Fatalf("waiting for %d subscribers: %v", want, err)
		}
		if info.Listeners == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNchanCursorSkipsOpenMessageEventSource(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	cursor, err := c.Open(ctx, "es")
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Publish(ctx, "es", relay.Message{Body: []byte("first"), Event: "upd"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := subscribe(ctx, n, "es", http.Header{"Accept": {"text/event-stream"}}, "last_event_id="+cursor)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("EventSource: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	// Read the first event (comments such as ": hi" are skipped).
	var event []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" && len(event) > 0 {
			break
		}
		if line != "" && !strings.HasPrefix(line, ":") {
			event = append(event, line)
		}
	}
	want := []string{"event: upd", "id: " + r.ID, "data: first"}
	if strings.Join(event, "\n") != strings.Join(want, "\n") {
		t.Fatalf("first event from cursor %s:\n%s\nwant:\n%s", cursor, strings.Join(event, "\n"), strings.Join(want, "\n"))
	}
}

func TestNchanPublishToUnopenedChannel(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	_, err := c.Publish(ctx, "never", relay.Message{Body: []byte("x")})
	var e *Error
	if !errors.Is(err, relay.ErrChannelNotFound) || !errors.As(err, &e) || e.Status != 404 {
		t.Fatalf("Publish to a never-opened channel: %v, want 404 ErrChannelNotFound", err)
	}
	if code, body := rawInfo(t, n, "never"); code != 404 {
		t.Fatalf("the channel exists now: %d %q", code, body)
	}
	resp, err := subscribe(ctx, n, "never", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if readAll(t, resp); resp.StatusCode != http.StatusForbidden {
		t.Errorf("subscribing to it: %d, want 403", resp.StatusCode)
	}
}

func TestNchanMessageTooLarge(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	small := newClient(t, n, "/pub_small/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := c.Open(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{2 << 10, 2 << 20} {
		_, err := small.Publish(ctx, "big", relay.Message{Body: make([]byte, size)})
		var e *Error
		if !errors.Is(err, relay.ErrMessageTooLarge) || !errors.As(err, &e) || e.Status != 413 {
			t.Errorf("%d-byte Publish over a 1k limit: %v, want 413 ErrMessageTooLarge", size, err)
		}
	}
	// nginx closed that connection; the next publish reconnects.
	if r, err := small.Publish(ctx, "big", relay.Message{Body: []byte("fits")}); err != nil || r.Queued != 2 {
		t.Errorf("Publish after 413: %+v, %v", r, err)
	}
}

func TestNchanCloseEndsLongPoll(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	cursor, err := c.Open(ctx, "bye")
	if err != nil {
		t.Fatal(err)
	}
	status := make(chan int, 1)
	go func() {
		resp, err := subscribe(ctx, n, "bye", http.Header{"Last-Event-Id": {cursor}}, "")
		if err != nil {
			status <- 0
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
	}()
	waitSubscribers(t, c, "bye", 1)
	if err := c.Close(ctx, "bye"); err != nil {
		t.Fatal(err)
	}
	if got := <-status; got != http.StatusGone {
		t.Errorf("waiting long-poll got %d, want 410", got)
	}
}

func TestNchanReopenAfterClose(t *testing.T) {
	n := startNchan(t, "")
	ctx := ctxTimeout(t, 10*time.Second)
	for _, who := range []string{"same client", "other client"} {
		t.Run(who, func(t *testing.T) {
			id := strings.ReplaceAll(who, " ", "-")
			c := newClient(t, n, "/pub/{channel}", Options{})
			reopener := c
			if who == "other client" {
				reopener = newClient(t, n, "/pub/{channel}", Options{})
			}
			if _, err := c.Open(ctx, id); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Publish(ctx, id, relay.Message{Body: []byte("old")}); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(ctx, id); err != nil {
				t.Fatal(err)
			}
			cursor, err := reopener.Open(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := reopener.Publish(ctx, id, relay.Message{Body: []byte("new")}); err != nil {
				t.Fatal(err)
			}
			resp, err := subscribe(ctx, n, id, http.Header{"Last-Event-Id": {cursor}}, "")
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); resp.StatusCode != 200 || body != "new" {
				t.Fatalf("poll from the re-open cursor %s: %d %q, want \"new\"", cursor, resp.StatusCode, body)
			}
			if info, err := reopener.Info(ctx, id); err != nil || info.Messages != 2 {
				t.Fatalf("Info after re-open: %+v, %v; want the open message and \"new\"", info, err)
			}
		})
	}
}

func TestNchanConcurrentOpen(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	const openers = 16
	cursors := make([]string, openers)
	errs := make([]error, openers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range openers {
		wg.Go(func() {
			<-start
			cursors[i], errs[i] = c.Open(ctx, "crowd")
		})
	}
	close(start)
	wg.Wait()
	for i := range openers {
		if errs[i] != nil || cursors[i] != cursors[0] {
			t.Errorf("Open %d: %q, %v; want %q like the others", i, cursors[i], errs[i], cursors[0])
		}
	}
	if info, err := c.Info(ctx, "crowd"); err != nil || info.Messages != 1 {
		t.Errorf("Info: %+v, %v; want exactly one open message", info, err)
	}
}

func TestNchanQueryTemplate(t *testing.T) {
	n := startNchan(t, "")
	c := newClient(t, n, "/pub?id={channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	cursor, err := c.Open(ctx, "q.1")
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Publish(ctx, "q.1", relay.Message{Body: []byte("via query")})
	if err != nil || r.Queued != 2 {
		t.Fatalf("Publish: %+v, %v", r, err)
	}
	// The same channel through the path-style location.
	if code, body := rawInfo(t, n, "q.1"); code != 200 || !strings.Contains(body, "last message id: "+r.ID) {
		t.Fatalf("GET /pub/q.1: %d %q", code, body)
	}
	if cursor == r.ID {
		t.Fatal("cursor equals the pushed message's ID")
	}
}

func TestNchanRedisStartsLate(t *testing.T) {
	r := servers.NewRedis(t)
	n := startNchan(t, r.Addr)
	c := newClient(t, n, "/pub/{channel}", Options{})

	started := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // the outage being simulated, not a synchronisation
		started <- r.TryStart()
	}()
	ctx := ctxTimeout(t, 5*time.Second)
	begin := time.Now()
	cursor, err := c.Open(ctx, "redis-late")
	if err != nil {
		t.Fatalf("Open while Redis starts: %v", err)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Logf("Open succeeded after %v", time.Since(begin))
	if time.Since(begin) < 250*time.Millisecond {
		t.Errorf("Open succeeded after %v, before Redis was up", time.Since(begin))
	}
	if _, err := relay.ParseMessageID(cursor); err != nil {
		t.Errorf("cursor %q: %v", cursor, err)
	}
	if _, err := c.Publish(ctx, "redis-late", relay.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// Redis forgets a DELETE at once: another client sees 404.
	if err := c.Close(ctx, "redis-late"); err != nil {
		t.Fatal(err)
	}
	other := newClient(t, n, "/pub/{channel}", Options{})
	if _, err := other.Info(ctx, "redis-late"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Info after Close: %v", err)
	}
	if code, _ := rawInfo(t, n, "redis-late"); code != 404 {
		t.Errorf("GET after Close with Redis: %d, want 404 at once", code)
	}
}

func TestNchanRedisNeverStarts(t *testing.T) {
	r := servers.NewRedis(t)
	n := startNchan(t, r.Addr)
	c := newClient(t, n, "/pub/{channel}", Options{})
	ctx := ctxTimeout(t, time.Second)
	begin := time.Now()
	_, err := c.Open(ctx, "redis-down")
	var e *Error
	if !errors.As(err, &e) || e.Status != 503 || !strings.Contains(err.Error(), "503") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open without Redis: %v, want an error naming 503 and the deadline", err)
	}
	t.Logf("after %v: %v", time.Since(begin), err)
	if d := time.Since(begin); d > 1500*time.Millisecond {
		t.Errorf("returned after %v, past the 1 s deadline", d)
	}
}
