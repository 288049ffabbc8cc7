package scaleout_test

// Scale out: two application instances, each behind its own nginx+Nchan
// node, with one redis-server behind both Nchan nodes (nchan_redis_pass) and
// behind both applications' stores (redisstore). The instances share their
// session cookie key, as instances behind a load balancer do.
//
//	browser ──▶ nginx 1 ─┬─ /sub/<id>  Nchan ──┐      ┌── app A (Manager A, redisstore)
//	                     └─ /*  ─────────────▶ app A   │
//	browser ──▶ nginx 2 ─┬─ /sub/<id>  Nchan ──┤ redis ┤
//	                     └─ /*  ─────────────▶ app B   └── app B (Manager B, redisstore)
//
// Each Manager publishes through its own node's /pub/<id>; Nchan shares
// channels, messages, listener counts and DELETE through Redis.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/redisstore"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/relaytest"
)

// scaleConf is one node: nginx proxies its application, serves listeners
// itself after asking the application's /authorize, and takes publishes from
// 127.0.0.1 only; every Nchan location keeps its channels in the shared
// Redis, under the test's namespace.
const scaleConf = `
{{template "main" .}}
error_log error.log info;
events { worker_connections 1024; }
http {
  access_log access.log;
{{template "temp_paths"}}
  nchan_shared_memory_size 16M;
  upstream app { server {{.App}}; }
  upstream nchan_redis {
    nchan_redis_server redis://{{.Redis}};
    nchan_redis_namespace {{.Namespace}};
    # Nchan 1.3.6 reconnects at once when Redis goes away, and that attempt
    # fails only when this timeout ends (default 10 s), even though the port
    # refuses at once: without it, service resumes ~11 s after an outage.
    nchan_redis_connect_timeout 500ms;
  }
  server {
    listen {{.Addr}};
    client_max_body_size 64k;
    location ~ "^/pub/([0-9a-f-]{36})$" {
      allow 127.0.0.1;
      deny all;
      nchan_publisher http;
      nchan_channel_id $1;
      nchan_redis_pass nchan_redis;
    }
    location ~ "^/sub/([0-9a-f-]{36})$" {
      nchan_subscriber eventsource longpoll;
      nchan_channel_id $1;
      nchan_redis_pass nchan_redis;
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_authorize_request /authorize;
    }
{{- if .Broadcast}}
    location = /sub/{{.Broadcast}} {
      nchan_subscriber eventsource longpoll;
      nchan_channel_id {{.Broadcast}};
      nchan_redis_pass nchan_redis;
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_max_channel_subscribers 0;
      nchan_authorize_request /authorize;
    }
{{- end}}
    location = /authorize {
      internal;
      proxy_pass http://app/authorize;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Channel-Id $nchan_channel_id;
    }
    location / {
      proxy_pass http://app;
      proxy_buffering off;
    }
  }
}
`

// scaleReadyPath is a publisher GET of a channel that never exists: 503
// until Nchan is connected to Redis, then 404.
const scaleReadyPath = "/pub/00000000-0000-4000-8000-000000000000"

// scaleWait bounds every wait of these tests for something that should
// happen at once.
const scaleWait = 5 * time.Second

var scaleSeq atomic.Int64

// scaleCluster is the whole deployment of one test.
type scaleCluster struct {
	redis     *servers.Redis
	namespace string // nchan_redis_namespace
	prefix    string // redisstore prefix
	cookieKey []byte // the session key both instances share
	nodes     [2]*scaleNode
	closes    *scaleCloses
	publishes *scaleCloses // relay Publish calls, by channel
	broadcast string       // Config.BroadcastChannel of both instances
	serverLog scaleLog

	mu        sync.Mutex
	browsers  []*scaleBrowser
	listeners []*scaleListener
	clients   []*redis.Client
	pubs      []*nchan.Client
	closeOnce sync.Once
}

// scaleNode is nginx node i and application instance i behind it.
type scaleNode struct {
	name  string // "A" or "B", the application's name
	ngx   *servers.Nginx
	app   *httptest.Server
	h     atomic.Pointer[http.Handler] // the application; replaced by restart
	mgr   *sessionpush.Manager
	pub   *nchan.Client
	store *redisstore.Store
}

func (n *scaleNode) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*n.h.Load()).ServeHTTP(w, r) }

// scaleCloses counts the relay Close calls (DELETEs) of every instance,
// old and restarted ones alike, by channel.
type scaleCloses struct {
	mu sync.Mutex
	by map[string][]string // channel → names of the instances that closed it
}

func (c *scaleCloses) add(instance, channel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.by[channel] = append(c.by[channel], instance)
}

func (c *scaleCloses) of(channel string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.by[channel])
}

// scaleRelay is an instance's nchan.Client that counts its Close and
// Publish calls.
type scaleRelay struct {
	relay.Relay
	name      string
	closes    *scaleCloses
	publishes *scaleCloses
}

func (r *scaleRelay) Publish(ctx context.Context, channel string, m relay.Message) (relay.Receipt, error) {
	r.publishes.add(r.name, channel)
	return r.Relay.Publish(ctx, channel, m)
}

func (r *scaleRelay) Close(ctx context.Context, channel string) error {
	r.closes.add(r.name, channel)
	return r.Relay.Close(ctx, channel)
}

// newScaleCluster starts Redis, both nodes and both instances. Everything
// is stopped when the test ends, or earlier by close.
func newScaleCluster(t *testing.T) *scaleCluster {
	t.Helper()
	return newScaleClusterWith(t, "")
}

// newScaleClusterWith is newScaleCluster with Config.BroadcastChannel set to
// broadcast on both instances and its subscriber location on both nodes.
func newScaleClusterWith(t *testing.T, broadcast string) *scaleCluster {
	t.Helper()
	servers.Require(t, "redis-server")
	servers.Require(t, "nginx")
	servers.Require(t, servers.NchanModule)
	seq := scaleSeq.Add(1)
	c := &scaleCluster{
		redis:     servers.StartRedis(t),
		namespace: fmt.Sprintf("scaleout%d", seq),
		prefix:    fmt.Sprintf("scaleout%d:", seq),
		cookieKey: securecookie.GenerateRandomKey(32),
		closes:    &scaleCloses{by: map[string][]string{}},
		publishes: &scaleCloses{by: map[string][]string{}},
		broadcast: broadcast,
	}
	t.Cleanup(c.close) // should setup fail half-way; runs again (as a no-op) below
	for i, name := range []string{"A", "B"} {
		n := &scaleNode{name: name}
		n.app = httptest.NewUnstartedServer(n)
		n.app.Config.ErrorLog = log.New(&c.serverLog, "app "+name+": ", 0)
		n.ngx = servers.StartNginxWith(t, scaleConf, servers.NginxOptions{
			Vars: map[string]any{
				"App":       n.app.Listener.Addr().String(),
				"Redis":     c.redis.Addr,
				"Namespace": c.namespace,
				"Broadcast": broadcast,
			},
			ReadyPath: scaleReadyPath,
		})
		c.nodes[i] = n
		c.startInstance(t, n)
		n.app.Start()
	}
	t.Cleanup(func() { // before the servers' own cleanups, which run earlier-registered last
		c.close()
		if log := c.serverLog.String(); strings.Contains(log, "panic") {
			t.Errorf("an application instance panicked:\n%s", log)
		}
	})
	return c
}

// scaleLog collects what the applications' http.Servers log (a handler's
// panic among it).
type scaleLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *scaleLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *scaleLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startInstance builds (or rebuilds, for a restart) node n's application
// instance: a new Redis client and store, a new publisher client and a new
// Manager, and puts it behind n's server.
func (c *scaleCluster) startInstance(t *testing.T, n *scaleNode) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: c.redis.Addr})
	pub, err := nchan.New(n.ngx.URL+"/pub/{channel}", nchan.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.clients = append(c.clients, rdb)
	c.pubs = append(c.pubs, pub)
	c.mu.Unlock()

	cookies := sessions.NewCookieStore(c.cookieKey) // each instance its own store, one key
	cookies.Options.HttpOnly, cookies.Options.SameSite = true, http.SameSiteLaxMode
	store := redisstore.New(rdb, redisstore.Options{Prefix: c.prefix})
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions:         cookies,
		Relay:            &scaleRelay{Relay: pub, name: n.name, closes: c.closes, publishes: c.publishes},
		Store:            store,
		Logger:           slog.New(slog.DiscardHandler),
		IdleTimeout:      time.Minute,
		BroadcastChannel: c.broadcast,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := scaleApp(n.name, mgr, cookies)
	n.mgr, n.pub, n.store = mgr, pub, store
	n.h.Store(&h)
}

// scaleApp is one application instance: sign-in and logout, /subscribe,
// /authorize for Nchan, /push to the caller's channel and /whoami. Every
// answer names the instance in X-App.
func scaleApp(name string, mgr *sessionpush.Manager, cookies sessions.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := cookies.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		if err := s.Save(r, w); err != nil {
			http.Error(w, "session", http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		s, _ := cookies.Get(r, "session")
		delete(s.Values, "user")
		if err := mgr.SignOut(w, r); err != nil {
			http.Error(w, "logout", http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("POST /subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /authorize", mgr.AuthorizeHandler())
	mux.HandleFunc("POST /push", func(w http.ResponseWriter, r *http.Request) {
		ch := sessionpush.CurrentChannel(r)
		if ch == nil {
			http.Error(w, "not signed in", http.StatusUnauthorized)
			return
		}
		var v any
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		switch err := ch.PushJSON(r.Context(), v); {
		case err == nil:
			w.WriteHeader(http.StatusNoContent)
		case errors.Is(err, sessionpush.ErrChannelNotFound):
			http.Error(w, "channel not open", http.StatusNotFound)
		default:
			http.Error(w, "push failed", http.StatusBadGateway)
		}
	})
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		if ch := sessionpush.CurrentChannel(r); ch != nil {
			io.WriteString(w, ch.User+" "+ch.ID)
		}
	})
	h := mgr.Middleware(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", name)
		h.ServeHTTP(w, r)
	})
}

// close ends the listeners, closes every client's connections, stops both
// nginx (gracefully, with no connection left to wait for), both
// applications, the Redis clients and Redis, in that order.
func (c *scaleCluster) close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, l := range c.listeners {
			l.close()
		}
		for _, b := range c.browsers {
			b.tr.CloseIdleConnections()
		}
		for _, p := range c.pubs {
			p.CloseIdleConnections()
		}
		for _, n := range c.nodes {
			if n != nil {
				n.ngx.Stop()
			}
		}
		for _, n := range c.nodes {
			if n != nil {
				n.app.Close()
			}
		}
		for _, rdb := range c.clients {
			rdb.Close()
		}
		c.redis.Stop()
	})
}

// ctx returns a context that ends after d or with the test.
func scaleCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// scaleBrowser is one cookie jar, so one session, with its own connections.
type scaleBrowser struct {
	name string
	c    *http.Client
	tr   *http.Transport
}

func (c *scaleCluster) browser(name string) *scaleBrowser {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}
	b := &scaleBrowser{name: name, c: &http.Client{Jar: jar, Transport: tr}, tr: tr}
	c.mu.Lock()
	c.browsers = append(c.browsers, b)
	c.mu.Unlock()
	return b
}

// call sends a request to node n and returns the status and body; the
// answer must come from n's application.
func (b *scaleBrowser) call(t *testing.T, n *scaleNode, method, path string, body io.Reader, hdr ...string) (int, string) {
	t.Helper()
	code, data, err := b.try(t, n, method, path, body, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return code, data
}

// try is call returning a failure instead of failing the test.
func (b *scaleBrowser) try(t *testing.T, n *scaleNode, method, path string, body io.Reader, hdr ...string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(scaleCtx(t, scaleWait), method, n.ngx.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("%s: %s %s via nginx of %s: %w", b.name, method, path, n.name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("%s: %s %s via nginx of %s: %w", b.name, method, path, n.name, err)
	}
	if got := resp.Header.Get("X-App"); got != n.name {
		return 0, "", fmt.Errorf("%s: %s %s via nginx of %s was answered by app %q (%s)", b.name, method, path, n.name, got, resp.Status)
	}
	return resp.StatusCode, string(data), nil
}

// waitNchan waits until node n's Nchan is connected to Redis: a publisher
// GET answers something other than 503.
func (c *scaleCluster) waitNchan(t *testing.T, n *scaleNode) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: time.Second}
	last := ""
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := hc.Get(n.ngx.URL + scaleReadyPath)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("Nchan of node %s not serving: %s", n.name, last)
		}
	}
}

func (b *scaleBrowser) login(t *testing.T, n *scaleNode, user string) {
	t.Helper()
	if code, _ := b.call(t, n, "POST", "/login", strings.NewReader(url.Values{"user": {user}}.Encode()),
		"Content-Type", "application/x-www-form-urlencoded"); code != http.StatusOK {
		t.Fatalf("%s: login on %s: %d", b.name, n.name, code)
	}
}

func (b *scaleBrowser) subscribe(t *testing.T, n *scaleNode) sessionpush.Subscription {
	t.Helper()
	code, body := b.call(t, n, "POST", "/subscribe", nil)
	var sub sessionpush.Subscription
	if code != http.StatusOK || json.Unmarshal([]byte(body), &sub) != nil || sub.Cursor == "" {
		t.Fatalf("%s: /subscribe on %s: %d %q", b.name, n.name, code, body)
	}
	return sub
}

func (b *scaleBrowser) whoami(t *testing.T, n *scaleNode) string {
	t.Helper()
	_, body := b.call(t, n, "GET", "/whoami", nil)
	return body
}

// scaleJSON is the body that PushJSON makes of v.
func scaleJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// scaleListener is one EventSource stream of a browser through a node.
type scaleListener struct {
	name    string
	channel string
	events  chan relaytest.Event
	done    chan struct{} // closed when the stream has ended
	end     []string      // how it ended: ":410: 410 Gone", "EOF", an error; valid after done
	body    io.Closer
	cancel  context.CancelFunc
}

// listen opens an EventSource stream on sub's channel through node n,
// resuming from sub's cursor with ?last_event_id=, and returns its status;
// with 200 the listener reads the stream until it ends or the test does.
func (c *scaleCluster) listen(t *testing.T, b *scaleBrowser, n *scaleNode, sub sessionpush.Subscription) (*scaleListener, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", n.ngx.URL+sub.URL+"?last_event_id="+url.QueryEscape(sub.Cursor), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.c.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("%s: listening through nginx of %s: %v", b.name, n.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode
	}
	l := &scaleListener{
		name:    fmt.Sprintf("%s's listener through nginx of %s", b.name, n.name),
		channel: sub.Channel,
		events:  make(chan relaytest.Event, 64),
		done:    make(chan struct{}),
		body:    resp.Body,
		cancel:  cancel,
	}
	go l.read(ctx, bufio.NewReader(resp.Body))
	c.mu.Lock()
	c.listeners = append(c.listeners, l)
	c.mu.Unlock()
	return l, http.StatusOK
}

// mustListen is listen that requires 200.
func (c *scaleCluster) mustListen(t *testing.T, b *scaleBrowser, n *scaleNode, sub sessionpush.Subscription) *scaleListener {
	t.Helper()
	l, code := c.listen(t, b, n, sub)
	if code != http.StatusOK {
		t.Fatalf("%s: EventSource through nginx of %s: %d", b.name, n.name, code)
	}
	return l
}

// read parses the stream into events until it ends; comments are skipped
// except ":410", which Nchan sends when the channel is deleted.
func (l *scaleListener) read(ctx context.Context, r *bufio.Reader) {
	defer close(l.done)
	var (
		ev   relaytest.Event
		data []string
		seen bool
	)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				l.end = append(l.end, "EOF")
			} else {
				l.end = append(l.end, err.Error())
			}
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if seen {
				ev.Data = strings.Join(data, "\n")
				select {
				case l.events <- ev:
				case <-ctx.Done():
					return
				}
				ev, data, seen = relaytest.Event{}, nil, false
			}
		case strings.HasPrefix(line, ":410"):
			l.end = append(l.end, line)
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.ID, seen = line[4:], true
		case strings.HasPrefix(line, "event: "):
			ev.Name, seen = line[7:], true
		case strings.HasPrefix(line, "data:"):
			data, seen = append(data, strings.TrimPrefix(line[5:], " ")), true
		}
	}
}

func (l *scaleListener) close() {
	l.cancel()
	l.body.Close()
	<-l.done
}

// expect requires the listener's next event to carry want.
func (l *scaleListener) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case ev := <-l.events:
		if ev.Data != want {
			t.Fatalf("%s got %q, want %q", l.name, ev.Data, want)
		}
	case <-l.done:
		select {
		case ev := <-l.events:
			if ev.Data == want {
				return
			}
			t.Fatalf("%s got %q, want %q", l.name, ev.Data, want)
		default:
		}
		t.Fatalf("%s ended (%q) before %q came", l.name, l.end, want)
	case <-time.After(scaleWait):
		t.Fatalf("%s: nothing came within %v, want %q", l.name, scaleWait, want)
	}
}

// expectEnd requires the stream to end with no event before the end, and
// returns how it ended.
func (l *scaleListener) expectEnd(t *testing.T) []string {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(scaleWait):
		t.Fatalf("%s still open %v after its channel was closed", l.name, scaleWait)
	}
	select {
	case ev := <-l.events:
		t.Fatalf("%s got %q before its end", l.name, ev.Data)
	default:
	}
	return l.end
}

// quiet shows that the listeners received nothing beyond what the test
// already read: it pushes a marker to each of their channels, which must
// be the next event of each.
func (c *scaleCluster) quiet(t *testing.T, ls ...*scaleListener) {
	t.Helper()
	markers := map[string]string{}
	for _, l := range ls {
		if _, ok := markers[l.channel]; !ok {
			markers[l.channel] = fmt.Sprintf("marker %d", len(markers))
			if err := c.nodes[0].mgr.PushJSON(scaleCtx(t, scaleWait), l.channel, markers[l.channel]); err != nil {
				t.Fatalf("marker to %s: %v", l.channel, err)
			}
		}
	}
	for _, l := range ls {
		l.expect(t, scaleJSON(markers[l.channel]))
	}
}

// waitListeners waits until both nodes report at least n listeners on
// channel: with Redis, Nchan counts the listeners of every node.
func (c *scaleCluster) waitListeners(t *testing.T, channel string, n int) {
	t.Helper()
	deadline := time.Now().Add(scaleWait)
	for {
		var got [2]relay.Info
		var errs [2]error
		for i, node := range c.nodes {
			got[i], errs[i] = node.pub.Info(context.Background(), channel)
		}
		if errs[0] == nil && errs[1] == nil && got[0].Listeners >= n && got[1].Listeners >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("channel %s: want %d listeners on both nodes; node 1: %+v %v; node 2: %+v %v",
				channel, n, got[0], errs[0], got[1], errs[1])
		}
		time.Sleep(5 * time.Millisecond) // polling Nchan, which has no way to notify
	}
}

// deletes counts the DELETE requests that both nginx logged, by channel.
func (c *scaleCluster) deletes(t *testing.T) map[string]int {
	t.Helper()
	re := regexp.MustCompile(`"DELETE /pub/([0-9a-f-]{36}) HTTP/1\.1" (\d+)`)
	counts := map[string]int{}
	for _, n := range c.nodes {
		b, err := os.ReadFile(filepath.Join(n.ngx.Dir, "access.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			counts[m[1]]++
		}
	}
	return counts
}

// TestScaleOut runs two instances behind two nginx+Nchan nodes on one
// Redis: a session signed in on one instance is served by both, listens
// through both nodes, and is pushed to, broadcast to and logged out by
// either instance.
func TestScaleOut(t *testing.T) {
	c := newScaleCluster(t)
	A, B := c.nodes[0], c.nodes[1]
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	var (
		s1     = c.browser("s1")
		sub1   sessionpush.Subscription
		l1, l2 *scaleListener
	)
	step("PushFromBReachesListenersOnBothNodes", func(t *testing.T) {
		s1.login(t, A, "alice")
		sub1 = s1.subscribe(t, A)
		// The jar keys cookies by host, not port: the cookie that app A set
		// through nginx 1 goes to nginx 2 as well, and app B, with the same
		// key, reads the same session and channel from it.
		if a, b := s1.whoami(t, A), s1.whoami(t, B); a != "alice "+sub1.Channel || b != a {
			t.Fatalf("whoami: app A %q, app B %q; want both %q", a, b, "alice "+sub1.Channel)
		}
		l1 = c.mustListen(t, s1, A, sub1)
		l2 = c.mustListen(t, s1, B, sub1)
		c.waitListeners(t, sub1.Channel, 2)

		// B's /push handler, reached through nginx 2 with the cookie from A.
		if code, body := s1.call(t, B, "POST", "/push", strings.NewReader(`"via B's /push"`)); code != http.StatusNoContent {
			t.Fatalf("POST /push on B: %d %q", code, body)
		}
		l1.expect(t, `"via B's /push"`)
		l2.expect(t, `"via B's /push"`)
		// Manager B, by channel ID.
		if err := B.mgr.PushJSON(scaleCtx(t, scaleWait), sub1.Channel, "via Manager B"); err != nil {
			t.Fatal(err)
		}
		l1.expect(t, scaleJSON("via Manager B"))
		l2.expect(t, scaleJSON("via Manager B"))
		c.quiet(t, l1, l2)
	})

	var others []*scaleListener // listeners of other users, live to the end
	step("BroadcastFromAReachesEveryListenerOnce", func(t *testing.T) {
		s2, s3, s4, s5 := c.browser("s2"), c.browser("s3"), c.browser("s4"), c.browser("s5")
		s2.login(t, B, "bob")
		s3.login(t, A, "carol")
		s4.login(t, B, "dave")
		s5.login(t, A, "erin")
		sub2, sub3, sub4 := s2.subscribe(t, B), s3.subscribe(t, A), s4.subscribe(t, B)
		s5.subscribe(t, A) // open, nobody listening
		others = []*scaleListener{
			c.mustListen(t, s2, B, sub2), // signed in on B, listens through nginx 2
			c.mustListen(t, s3, A, sub3), // on A, through nginx 1
			c.mustListen(t, s4, A, sub4), // on B, through nginx 1
		}
		for _, l := range others {
			c.waitListeners(t, l.channel, 1)
		}
		n, err := A.mgr.Broadcast(scaleCtx(t, scaleWait), "broadcast")
		if err != nil || n.Channels != 5 {
			t.Fatalf("Broadcast from A = %+v, %v; want the 5 open channels", n, err)
		}
		all := append([]*scaleListener{l1, l2}, others...)
		for _, l := range all {
			l.expect(t, scaleJSON("broadcast"))
		}
		c.quiet(t, all...) // exactly once: the marker comes next
	})

	step("LogoutOnBEndsListenersOnBothNodes", func(t *testing.T) {
		if code, body := s1.call(t, B, "POST", "/logout", nil); code != http.StatusNoContent {
			t.Fatalf("POST /logout on B: %d %q", code, body)
		}
		end2 := l2.expectEnd(t)
		end1 := l1.expectEnd(t)
		t.Logf("after logout on B: listener through nginx 2 ended with %q, through nginx 1 with %q", end2, end1)
		for _, end := range [][]string{end1, end2} {
			if len(end) == 0 || end[0] != ":410: 410 Gone" && end[0] != "EOF" {
				t.Errorf("a stream ended with %q, want \":410: 410 Gone\" or EOF", end)
			}
		}
		if got := c.closes.of(sub1.Channel); !slices.Equal(got, []string{"B"}) {
			t.Errorf("relay Close calls for the logged-out channel: %q, want one by B", got)
		}
		ctx := scaleCtx(t, scaleWait)
		if ok, err := A.mgr.Exists(ctx, sub1.Channel); ok || err != nil {
			t.Errorf("Exists on A after logout on B = %v, %v", ok, err)
		}
		if err := A.mgr.PushJSON(ctx, sub1.Channel, "too late"); !errors.Is(err, sessionpush.ErrChannelNotFound) {
			t.Errorf("push from A after logout on B: %v, want ErrChannelNotFound", err)
		}
		for _, n := range c.nodes {
			if _, err := n.pub.Info(ctx, sub1.Channel); !errors.Is(err, relay.ErrChannelNotFound) {
				t.Errorf("node of %s after logout: Info %v, want ErrChannelNotFound", n.name, err)
			}
		}
		if _, code := c.listen(t, s1, A, sub1); code != http.StatusForbidden {
			t.Errorf("listening again after logout: %d, want 403", code)
		}
	})

	step("PushUserFromBReachesBothSessionsOfAUser", func(t *testing.T) {
		u1, u2 := c.browser("u1"), c.browser("u2")
		u1.login(t, A, "ursula")
		u2.login(t, B, "ursula")
		subU1, subU2 := u1.subscribe(t, A), u2.subscribe(t, B)
		if subU1.Channel == subU2.Channel {
			t.Fatalf("two sessions share channel %s", subU1.Channel)
		}
		lu1 := c.mustListen(t, u1, B, subU1) // signed in on A, listens through nginx 2
		lu2 := c.mustListen(t, u2, A, subU2) // signed in on B, listens through nginx 1
		c.waitListeners(t, subU1.Channel, 1)
		c.waitListeners(t, subU2.Channel, 1)
		n, err := B.mgr.PushUser(scaleCtx(t, scaleWait), "ursula", "for ursula")
		if err != nil || n != 2 {
			t.Fatalf("PushUser from B = %d, %v; want 2", n, err)
		}
		lu1.expect(t, scaleJSON("for ursula"))
		lu2.expect(t, scaleJSON("for ursula"))
		if n, err := B.mgr.PushUser(scaleCtx(t, scaleWait), "alice", "gone"); n != 0 || err != nil {
			t.Errorf("PushUser to the logged-out alice = %d, %v; want 0, nil", n, err)
		}
		c.quiet(t, append([]*scaleListener{lu1, lu2}, others...)...) // nobody else got it
	})
}

// TestScaleOutBroadcastChannel sets Config.BroadcastChannel on both
// instances, with its exact-match subscriber location on both nodes:
// sessions signed in on either instance listen to it through either node,
// and Broadcast from A is one publish that reaches all of them once, and
// none of the sessions' own channels.
func TestScaleOutBroadcastChannel(t *testing.T) {
	bc := sessionpush.SuggestedBroadcastChannel
	c := newScaleClusterWith(t, bc)
	A, B := c.nodes[0], c.nodes[1]

	type member struct {
		b         *scaleBrowser
		via       *scaleNode // the node it listens through
		own, bcst *scaleListener
	}
	var members []member
	for i, m := range []struct {
		user    string
		on, via *scaleNode
	}{
		{"alice", A, A}, {"bob", B, B}, {"carol", A, B}, {"dave", B, A},
	} {
		b := c.browser(m.user)
		b.login(t, m.on, m.user)
		sub := b.subscribe(t, m.on)
		if sub.Broadcast == nil || sub.Broadcast.Channel != bc || sub.Broadcast.URL != "/sub/"+bc || sub.Broadcast.Cursor == "" {
			t.Fatalf("%s: /subscribe on %s: broadcast %+v", m.user, m.on.name, sub.Broadcast)
		}
		members = append(members, member{
			b:    b,
			via:  m.via,
			own:  c.mustListen(t, b, m.via, sub),
			bcst: c.mustListen(t, b, m.via, *sub.Broadcast),
		})
		c.waitListeners(t, sub.Channel, 1)
		c.waitListeners(t, bc, i+1)
	}
	if _, code := c.listen(t, c.browser("stranger"), A, sessionpush.Subscription{Channel: bc, URL: "/sub/" + bc, Cursor: relay.NoCursor}); code != http.StatusForbidden {
		t.Errorf("broadcast channel without a session through nginx: %d, want 403", code)
	}

	before := len(c.publishes.of(bc))
	n, err := A.mgr.Broadcast(scaleCtx(t, scaleWait), "to everybody")
	if err != nil {
		t.Fatalf("Broadcast from A: %v", err)
	}
	t.Logf("Broadcast from A: Nchan reports %d listeners reached", n.Listeners)
	if n != (sessionpush.BroadcastResult{Channels: 1, Listeners: len(members)}) {
		t.Errorf("Broadcast from A = %+v, want the broadcast channel and its %d listeners", n, len(members))
	}
	if got := c.publishes.of(bc)[before:]; !slices.Equal(got, []string{"A"}) {
		t.Errorf("relay Publish calls of one Broadcast: %q, want one by A", got)
	}
	for _, m := range members {
		m.bcst.expect(t, scaleJSON("to everybody"))
	}
	// Exactly once: the next broadcast comes next; and the sessions' own
	// channels got nothing: their markers come first.
	if _, err := B.mgr.Broadcast(scaleCtx(t, scaleWait), "again"); err != nil {
		t.Fatalf("Broadcast from B: %v", err)
	}
	var owns []*scaleListener
	for _, m := range members {
		m.bcst.expect(t, scaleJSON("again"))
		owns = append(owns, m.own)
	}
	c.quiet(t, owns...)
}

// TestScaleOutRedisRestart stops the Redis behind both nodes and both
// stores, and starts it again: pushes fail with errors that name the cause
// while it is down, and the deployment serves again afterwards, without
// panics or leaked goroutines.
func TestScaleOutRedisRestart(t *testing.T) {
	servers.Require(t, "redis-server")
	servers.Require(t, "nginx")
	servers.Require(t, servers.NchanModule)
	before := runtime.NumGoroutine()
	c := newScaleCluster(t)
	A, B := c.nodes[0], c.nodes[1]

	s1 := c.browser("s1")
	s1.login(t, A, "alice")
	sub1 := s1.subscribe(t, A)
	l1 := c.mustListen(t, s1, B, sub1)
	c.waitListeners(t, sub1.Channel, 1)
	if err := B.mgr.PushJSON(scaleCtx(t, scaleWait), sub1.Channel, "before"); err != nil {
		t.Fatal(err)
	}
	l1.expect(t, scaleJSON("before"))

	c.redis.Stop()
	t.Log("redis stopped")

	// Manager B looks the channel up in the store first: the store's error.
	const short = 500 * time.Millisecond
	began := time.Now()
	err := B.mgr.PushJSON(scaleCtx(t, short), sub1.Channel, "while down")
	t.Logf("Manager B push with Redis down, after %v: %v", time.Since(began).Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "redisstore: get "+sub1.Channel) ||
		!errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Manager B push with Redis down: %v; want a redisstore error naming the refused connection or the deadline", err)
	}
	if errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Errorf("Manager B push with Redis down reports the channel closed: %v", err)
	}
	// Given the time, go-redis gives up by itself (MaxRetries, DialerRetries)
	// and its error names the refused connection.
	began = time.Now()
	err = B.mgr.PushJSON(scaleCtx(t, 10*time.Second), sub1.Channel, "while down, longer deadline")
	t.Logf("Manager B push with Redis down, given 10 s, after %v: %v", time.Since(began).Round(time.Millisecond), err)
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "redisstore: get "+sub1.Channel) {
		t.Errorf("Manager B push with Redis down, given time: %v; want a redisstore error wrapping ECONNREFUSED", err)
	}
	// Nchan answers 503 while it has no Redis; the publisher client retries
	// it until the deadline and says so.
	_, err = B.pub.Publish(scaleCtx(t, short), sub1.Channel, relay.Message{Body: []byte(`"raw"`)})
	t.Logf("Nchan publish through node 2 with Redis down: %v", err)
	var ne *nchan.Error
	if !errors.As(err, &ne) || ne.Status != http.StatusServiceUnavailable || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Nchan publish with Redis down: %v; want 503 and the deadline", err)
	}
	n, err := A.mgr.Broadcast(scaleCtx(t, short), "broadcast while down")
	t.Logf("Broadcast from A with Redis down: %+v, %v", n, err)
	if n.Channels != 0 || err == nil || !strings.Contains(err.Error(), "redisstore: list channels") {
		t.Errorf("Broadcast with Redis down = %+v, %v; want 0 channels and the store's error", n, err)
	}
	s2 := c.browser("s2")
	s2.login(t, B, "bob") // the cookie alone, no Redis
	code, _ := s2.call(t, B, "POST", "/subscribe", nil)
	t.Logf("/subscribe on B with Redis down: %d", code)
	if code != http.StatusBadGateway && code != http.StatusGatewayTimeout {
		t.Errorf("/subscribe with Redis down: %d, want 502 or 504", code)
	}
	if _, code := c.listen(t, s1, A, sub1); code == http.StatusOK {
		t.Error("a new listener was let in while Redis is down")
	} else {
		t.Logf("a new listener through nginx 1 with Redis down: %d", code)
	}
	select {
	case <-l1.done:
		t.Logf("listener through nginx 2 ended while Redis was down: %q", l1.end)
	default:
		t.Log("listener through nginx 2 still open while Redis is down")
	}

	c.redis.Start() // same port, no persistence: every channel and record is lost
	began = time.Now()
	for _, n := range c.nodes {
		c.waitNchan(t, n)
	}
	t.Logf("both Nchan nodes serve again %v after Redis started", time.Since(began).Round(time.Millisecond))
	var sub2 sessionpush.Subscription
	for deadline := time.Now().Add(scaleWait); ; time.Sleep(20 * time.Millisecond) {
		code, body, err := s2.try(t, B, "POST", "/subscribe", nil)
		if err == nil && code == http.StatusOK {
			if err := json.Unmarshal([]byte(body), &sub2); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/subscribe on B after the restart: %d, %v", code, err)
		}
	}
	t.Logf("/subscribe on B works %v after Redis started", time.Since(began).Round(time.Millisecond))
	l2 := c.mustListen(t, s2, A, sub2)
	c.waitListeners(t, sub2.Channel, 1)
	if err := B.mgr.PushJSON(scaleCtx(t, scaleWait), sub2.Channel, "after"); err != nil {
		t.Fatalf("push after the restart: %v", err)
	}
	l2.expect(t, scaleJSON("after"))

	// The restart lost every channel: pushing to one opened before it is
	// "not found", and its session gets a channel again from /subscribe.
	if err := A.mgr.PushJSON(scaleCtx(t, scaleWait), sub1.Channel, "lost"); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Errorf("push to a channel from before the restart: %v, want ErrChannelNotFound", err)
	}
	select {
	case <-l1.done:
		t.Logf("listener from before the outage: ended with %q", l1.end)
	default:
		t.Log("listener from before the outage: still open after the restart, nothing told it the channel was lost")
	}
	sub1b := s1.subscribe(t, A)
	t.Logf("s1 subscribes again: channel %s (before: %s)", sub1b.Channel, sub1.Channel)
	l1b := c.mustListen(t, s1, B, sub1b)
	c.waitListeners(t, sub1b.Channel, 1)
	if err := B.mgr.PushJSON(scaleCtx(t, scaleWait), sub1b.Channel, "back"); err != nil {
		t.Fatal(err)
	}
	l1b.expect(t, scaleJSON("back"))
	c.quiet(t, l1b, l2)
	if info, err := B.pub.Info(scaleCtx(t, scaleWait), sub1b.Channel); err == nil {
		t.Logf("reopened channel: Nchan counts %d listener(s)", info.Listeners)
	}
	var zombie []string
	for timeout := time.After(time.Second); !slices.Contains(zombie, scaleJSON("marker 0")); {
		select {
		case ev := <-l1.events:
			zombie = append(zombie, ev.Data)
			continue
		case <-timeout:
		}
		break
	}
	t.Logf("listener from before the outage, on the reopened channel ID, got %q", zombie)

	c.close()
	deadline := time.Now().Add(scaleWait)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after closing everything, %d before:\n%s",
				runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestScaleOutExpireIdle runs idle expiry on both instances at once: each
// idle channel is closed by exactly one of them, with one DELETE, and an
// instance that restarts carries on from what the store holds.
func TestScaleOutExpireIdle(t *testing.T) {
	c := newScaleCluster(t)
	A, B := c.nodes[0], c.nodes[1]
	ctx := scaleCtx(t, 20*time.Second)

	// Channels opened on either instance, never listened to.
	const idle = 6
	var idleIDs []string
	for i := range idle {
		n := c.nodes[i%2]
		b := c.browser(fmt.Sprint("idle", i))
		b.login(t, n, fmt.Sprint("user", i))
		idleIDs = append(idleIDs, b.subscribe(t, n).Channel)
	}
	// One with a listener and one fresh, neither of which may be closed.
	busy := c.browser("busy")
	busy.login(t, B, "busy")
	busySub := busy.subscribe(t, B)
	busyL := c.mustListen(t, busy, A, busySub)
	c.waitListeners(t, busySub.Channel, 1)
	fresh := c.browser("fresh")
	fresh.login(t, A, "fresh")
	freshSub := fresh.subscribe(t, A)

	old := time.Now().Add(-time.Hour)
	for _, id := range append(slices.Clone(idleIDs), busySub.Channel) {
		rec, ok, err := A.store.Get(ctx, id)
		if !ok || err != nil {
			t.Fatalf("store Get %s = %v, %v", id, ok, err)
		}
		rec.LastSeen = old
		if err := A.store.Add(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}

	var (
		closed [2]int
		errs   [2]error
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	for i, n := range c.nodes {
		wg.Go(func() {
			<-start
			closed[i], errs[i] = n.mgr.ExpireIdle(ctx)
		})
	}
	close(start)
	wg.Wait()
	t.Logf("ExpireIdle at once: A closed %d (%v), B closed %d (%v)", closed[0], errs[0], closed[1], errs[1])
	if errs[0] != nil || errs[1] != nil || closed[0]+closed[1] != idle {
		t.Fatalf("ExpireIdle: A %d, %v; B %d, %v; want %d closed in all", closed[0], errs[0], closed[1], errs[1], idle)
	}
	for _, id := range idleIDs {
		if got := c.closes.of(id); len(got) != 1 {
			t.Errorf("idle channel %s: relay Close by %q, want exactly one", id, got)
		}
		for _, n := range c.nodes {
			if _, ok, err := n.store.Get(ctx, id); ok || err != nil {
				t.Errorf("idle channel %s still in %s's store (%v)", id, n.name, err)
			}
			if _, err := n.pub.Info(ctx, id); !errors.Is(err, relay.ErrChannelNotFound) {
				t.Errorf("idle channel %s on the node of %s: %v, want ErrChannelNotFound", id, n.name, err)
			}
		}
	}
	// On the wire: one DELETE per idle channel across both nginx (the
	// access log is written when a request ends, so wait for the last).
	var dels map[string]int
	for deadline := time.Now().Add(scaleWait); ; time.Sleep(10 * time.Millisecond) {
		dels = c.deletes(t)
		if len(dels) >= idle || time.Now().After(deadline) {
			break
		}
	}
	for _, id := range idleIDs {
		if dels[id] != 1 {
			t.Errorf("idle channel %s: %d DELETE requests in the access logs, want 1", id, dels[id])
		}
	}
	if len(dels) != idle {
		t.Errorf("DELETE requests for %d channels, want %d: %v", len(dels), idle, dels)
	}
	for _, id := range []string{busySub.Channel, freshSub.Channel} {
		if ok, err := B.mgr.Exists(ctx, id); !ok || err != nil {
			t.Errorf("channel %s closed by the expiry (%v)", id, err)
		}
	}
	if rec, _, _ := B.store.Get(ctx, busySub.Channel); !rec.LastSeen.After(old.Add(30 * time.Minute)) {
		t.Errorf("the listened channel was not touched: LastSeen %v", rec.LastSeen)
	}
	c.quiet(t, busyL) // its listener is still there and got nothing else

	// Restart instance A: a new Manager, store client and publisher client,
	// nothing kept but what Redis holds.
	c.startInstance(t, A)
	for _, id := range []string{busySub.Channel, freshSub.Channel} {
		if ok, err := A.mgr.Exists(ctx, id); !ok || err != nil {
			t.Errorf("restarted A: Exists(%s) = %v, %v", id, ok, err)
		}
	}
	if err := A.mgr.PushJSON(ctx, busySub.Channel, "from the new A"); err != nil {
		t.Fatal(err)
	}
	busyL.expect(t, scaleJSON("from the new A"))
	if got := busy.subscribe(t, A); got.Channel != busySub.Channel {
		t.Errorf("/subscribe on the new A: channel %s, want the open %s", got.Channel, busySub.Channel)
	}
	// The fresh channel goes idle; the new A expires it, B finds nothing.
	rec, _, err := A.store.Get(ctx, freshSub.Channel)
	if err != nil {
		t.Fatal(err)
	}
	rec.LastSeen = old
	if err := A.store.Add(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if n, err := A.mgr.ExpireIdle(ctx); n != 1 || err != nil {
		t.Errorf("ExpireIdle on the restarted A = %d, %v; want 1", n, err)
	}
	if n, err := B.mgr.ExpireIdle(ctx); n != 0 || err != nil {
		t.Errorf("ExpireIdle on B afterwards = %d, %v; want 0", n, err)
	}
	if got := c.closes.of(freshSub.Channel); !slices.Equal(got, []string{"A"}) {
		t.Errorf("fresh channel: relay Close by %q, want once by A", got)
	}
	if ok, err := B.mgr.Exists(ctx, freshSub.Channel); ok || err != nil {
		t.Errorf("fresh channel after expiry: Exists on B = %v, %v", ok, err)
	}
	if ok, err := B.mgr.Exists(ctx, busySub.Channel); !ok || err != nil {
		t.Errorf("listened channel after the second expiry: Exists on B = %v, %v", ok, err)
	}
	c.quiet(t, busyL)
}
