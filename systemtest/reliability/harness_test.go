package reliability

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/redishub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/relaytest"
)

// long reports whether the long variants run (SESSIONPUSH_LONG=1).
func long() bool { return os.Getenv("SESSIONPUSH_LONG") == "1" }

// pick returns short, or long with SESSIONPUSH_LONG=1.
func pick[T any](short, long_ T) T {
	if long() {
		return long_
	}
	return short
}

// target is a relay under test: its publisher side and where its listeners
// connect.
type target struct {
	name  string
	relay relay.Relay
	base  string // "http://127.0.0.1:port"; listeners connect to base+"/sub/"+channel
	gaps  bool   // the relay signals gaps

	// tls, when not nil, is the client side of a server over TLS
	// (base is then "https://..."), which speaks HTTP/2 if http2.
	tls   *tls.Config
	http2 bool

	// bases, when set, are the instances that serve listeners of the
	// same relay: each subURL names the next one, so that every
	// reconnection goes to another instance.
	bases []string
	turn  atomic.Int64

	// settle, when set, returns once every instance that serves
	// listeners of channel ch holds the message with ID id, if it holds
	// the channel at all: a relay of several instances applies a message
	// on each a moment after Publish returned.
	settle func(ctx context.Context, ch, id string) error
}

// newHTTPClient returns a client of its own for the target's listeners,
// its idle connections closed at cleanup: over TLS it trusts the server's
// certificate, and speaks HTTP/2 when the server does.
func (tg *target) newHTTPClient(t testing.TB) *http.Client {
	hc := newHTTPClient(t)
	if tg.tls != nil {
		tr := hc.Transport.(*http.Transport)
		tr.TLSClientConfig = tg.tls.Clone()
		tr.ForceAttemptHTTP2 = tg.http2
	}
	return hc
}

func (tg *target) subURL(ch string) string {
	if len(tg.bases) > 0 {
		return tg.bases[int(tg.turn.Add(1))%len(tg.bases)] + "/sub/" + ch
	}
	return tg.base + "/sub/" + ch
}

// redishubTarget starts a Redis and n instances of redishub on it, each
// with opts and a client of its own, behind real HTTP servers; the target
// publishes through the first, and its listeners go to each in turn.
func redishubTarget(t testing.TB, opts hub.Options, n int) (*target, []*redishub.Relay) {
	rd := servers.StartRedis(t)
	var relays []*redishub.Relay
	tg := &target{name: "redishub", gaps: true}
	for range n {
		client := redis.NewClient(&redis.Options{Addr: rd.Addr})
		r, err := redishub.New(client, redishub.Options{Hub: opts})
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /sub/{ch}", func(w http.ResponseWriter, req *http.Request) {
			r.ServeListener(w, req, req.PathValue("ch"))
		})
		srv := httptest.NewServer(mux)
		t.Cleanup(func() { // before Redis stops: cleanups run last first
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := r.Shutdown(ctx); err != nil {
				t.Errorf("redishub shutdown: %v", err)
			}
			srv.Close()
			client.Close()
		})
		relays = append(relays, r)
		tg.bases = append(tg.bases, srv.URL)
	}
	tg.relay, tg.base = relays[0], tg.bases[0]
	tg.settle = func(ctx context.Context, ch, id string) error {
		want, err := relay.ParseMessageID(id)
		if err != nil {
			return err
		}
		for _, r := range relays {
			if err := settled(ctx, r.Hub(), ch, want); err != nil {
				return err
			}
		}
		return nil
	}
	return tg, relays
}

// settled returns once h's replica of channel ch holds the message with
// ID want or a later one, or h has no replica of ch. The hub tells no
// event of it, so it asks every millisecond.
func settled(ctx context.Context, h *hub.Hub, ch string, want relay.MessageID) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		info, err := h.Info(ctx, ch)
		if errors.Is(err, relay.ErrChannelNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if last, err := relay.ParseMessageID(info.LastMessageID); err == nil && last.Compare(want) >= 0 {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("replica of %s short of %v: %w", ch, want, ctx.Err())
		}
	}
}

// serveHub serves h's listeners at /sub/{channel} on a real HTTP server on
// 127.0.0.1, closed at cleanup (after h's own cleanups registered later).
func serveHub(t testing.TB, h *hub.Hub) *httptest.Server {
	return serveHubOver(t, h, plain)
}

// serveHubOver is serveHub on a server that speaks p.
func serveHubOver(t testing.TB, h *hub.Hub, p proto) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{ch}", func(w http.ResponseWriter, r *http.Request) {
		if p.http2 && r.ProtoMajor != 2 && r.Header.Get("Upgrade") == "" {
			t.Errorf("%s listener over %s", p.name, r.Proto)
		}
		h.ServeListener(w, r, r.PathValue("ch"))
	})
	srv := httptest.NewUnstartedServer(mux)
	if p.tls {
		srv.EnableHTTP2 = p.http2
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil && !errors.Is(err, relay.ErrClosed) {
			t.Errorf("hub shutdown: %v", err)
		}
		srv.Close()
	})
	return srv
}

// hubTarget starts a hub with opts behind a real HTTP server.
func hubTarget(t testing.TB, opts hub.Options) (*target, *hub.Hub) {
	return hubTargetOver(t, opts, plain)
}

// proto is how the server of a hub target speaks: plain HTTP/1.1, HTTP/1.1
// over TLS, or HTTP/2 (over TLS).
type proto struct {
	name       string
	tls, http2 bool
}

var (
	plain     = proto{name: "http1"}
	tlsHTTP1  = proto{name: "tls-http1", tls: true}
	tlsHTTP2  = proto{name: "http2", tls: true, http2: true}
	tlsProtos = []proto{tlsHTTP1, tlsHTTP2}
)

// hubTargetOver starts a hub with opts behind a real HTTP server on
// 127.0.0.1 that speaks p, over TLS with a certificate of its own.
func hubTargetOver(t testing.TB, opts hub.Options, p proto) (*target, *hub.Hub) {
	h := hub.New(opts)
	srv := serveHubOver(t, h, p)
	tg := &target{name: "hub", relay: h, base: srv.URL, gaps: true, http2: p.http2}
	if p.tls {
		tg.tls = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	}
	return tg, h
}

// nchanConf serves publishers at /pub/big/<id> (a buffer of {{.Big}}
// messages) and /pub/small/<id> (a buffer of {{.Small}}), and listeners of
// every transport at /sub/<id>. Messages live an hour.
const nchanConf = `{{template "main" .}}
error_log error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
{{template "temp_paths"}}
  nchan_shared_memory_size 128M;
  server {
    listen {{.Addr}};
    location = /ready { return 204; }
    location ~ ^/pub/big/([^/]+)$ {
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length {{.Big}};
      nchan_message_timeout 1h;
    }
    location ~ ^/pub/small/([^/]+)$ {
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length {{.Small}};
      nchan_message_timeout 1h;
    }
    location ~ ^/sub/([^/]+)$ {
      nchan_subscriber;
      nchan_channel_id $1;
      nchan_subscribe_existing_channels_only on;
    }
  }
}
`

// nchanTargets starts nginx with Nchan and returns a target whose channels
// keep big messages and one whose channels keep small.
func nchanTargets(t testing.TB, big, small int) (bigT, smallT *target) {
	ngx := servers.StartNginxWith(t, nchanConf, servers.NginxOptions{
		Vars:      map[string]any{"Big": big, "Small": small},
		ReadyPath: "/ready",
	})
	mk := func(kind string) *target {
		c, err := nchan.New(ngx.URL+"/pub/"+kind+"/{channel}", nchan.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.CloseIdleConnections)
		return &target{name: "nchan", relay: c, base: ngx.URL}
	}
	return mk("big"), mk("small")
}

// newChannel opens a fresh channel and returns it and its cursor.
func newChannel(t testing.TB, tg *target) (string, string) {
	t.Helper()
	ch := fmt.Sprintf("rel-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cur, err := tg.relay.Open(ctx, ch)
	if err != nil {
		t.Fatalf("open %s: %v", ch, err)
	}
	return ch, cur
}

// position is where a listener resumes: after the message id; a long-poll
// resumes with the Last-Modified and Etag of its last answer when it has
// them.
type position struct {
	id, modified, etag string
}

// event is one message as a listener got it.
type event struct {
	pos  position
	body string
	gap  string // the position named by a gap signal just before it; "" if none
}

// stream is one connection of a listener.
type stream interface {
	// next returns the next message, or an error when the connection ends.
	next() (event, error)
	// close ends the connection.
	close()
}

// errEnded is a stream's end announced by the relay (410 and its
// equivalents).
var errEnded = errors.New("stream ended by the relay")

// transport connects listeners one way.
type transport struct {
	name string
	dial func(ctx context.Context, hc *http.Client, url string, from position) (stream, error)
}

var transports = []transport{
	{"longpoll", dialLongPoll},
	{"eventsource", dialEventSource},
	{"websocket", dialWebSocket},
}

// newHTTPClient returns a client of its own, its idle connections closed
// at cleanup.
func newHTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type longPoll struct {
	ctx context.Context
	hc  *http.Client
	url string
	pos position
}

func dialLongPoll(ctx context.Context, hc *http.Client, url string, from position) (stream, error) {
	return &longPoll{ctx: ctx, hc: hc, url: url, pos: from}, nil
}

func (l *longPoll) next() (event, error) {
	for {
		req, err := http.NewRequestWithContext(l.ctx, "GET", l.url, nil)
		if err != nil {
			return event{}, err
		}
		switch {
		case l.pos.modified != "":
			req.Header.Set("If-Modified-Since", l.pos.modified)
			req.Header.Set("If-None-Match", l.pos.etag)
		case l.pos.id != "":
			req.Header.Set("Last-Event-ID", l.pos.id)
		}
		resp, err := l.hc.Do(req)
		if err != nil {
			return event{}, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return event{}, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusRequestTimeout, http.StatusNotModified:
			continue
		case http.StatusGone:
			return event{}, errEnded
		default:
			return event{}, fmt.Errorf("long-poll: %s", resp.Status)
		}
		lm, etag := resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")
		mt, err := http.ParseTime(lm)
		if err != nil || etag == "" {
			return event{}, fmt.Errorf("long-poll: Last-Modified %q, Etag %q", lm, etag)
		}
		l.pos = position{id: fmt.Sprintf("%d:%s", mt.Unix(), etag), modified: lm, etag: etag}
		return event{pos: l.pos, body: string(body), gap: resp.Header.Get("X-Gap")}, nil
	}
}

func (l *longPoll) close() {}

type eventSource struct {
	body io.Closer
	r    *bufio.Reader
}

// openEventSource opens an EventSource stream after from.
func openEventSource(ctx context.Context, hc *http.Client, url string, from string) (*eventSource, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if from != "" {
		req.Header.Set("Last-Event-ID", from)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("EventSource: %s", resp.Status)
	}
	return &eventSource{body: resp.Body, r: bufio.NewReader(resp.Body)}, nil
}

func dialEventSource(ctx context.Context, hc *http.Client, url string, from position) (stream, error) {
	return openEventSource(ctx, hc, url, from.id)
}

// next reads the next message; an "event: gap" without id before it is the
// gap signal.
func (e *eventSource) next() (event, error) {
	gap := ""
	for {
		ev, ok := relaytest.ReadEvent(e.r)
		if !ok {
			return event{}, errEnded
		}
		if ev.Name == "gap" && ev.ID == "" {
			gap = ev.Data
			continue
		}
		return event{pos: position{id: ev.ID}, body: ev.Data, gap: gap}, nil
	}
}

func (e *eventSource) close() { e.body.Close() }

type webSocket struct {
	ctx  context.Context
	conn *websocket.Conn
}

// The WebSocket subprotocols, offered as the kit's client offers them:
// Nchan takes the first, the embedded relay prefers the second, whose
// frames carry its gap line.
var metaProtocols = []string{"ws+meta.nchan", "ws+meta.sessionpush"}

// dialWebSocket connects through hc, which dials over HTTP/1.1 for the
// upgrade even when it speaks HTTP/2.
func dialWebSocket(ctx context.Context, hc *http.Client, url string, from position) (stream, error) {
	u := "ws" + strings.TrimPrefix(url, "http")
	if from.id != "" {
		u += "?last_event_id=" + from.id
	}
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: metaProtocols, HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(-1)
	if !slices.Contains(metaProtocols, conn.Subprotocol()) {
		conn.CloseNow()
		return nil, fmt.Errorf("WebSocket: subprotocol %q", conn.Subprotocol())
	}
	return &webSocket{ctx: ctx, conn: conn}, nil
}

// next reads one ws+meta frame: header lines (id, content-type, gap),
// a blank line, the body.
func (w *webSocket) next() (event, error) {
	_, b, err := w.conn.Read(w.ctx)
	if err != nil {
		var ce websocket.CloseError
		if errors.As(err, &ce) && ce.Code == websocket.StatusGoingAway {
			return event{}, errEnded
		}
		return event{}, err
	}
	head, body, ok := strings.Cut(string(b), "\n\n")
	if !ok {
		return event{}, fmt.Errorf("WebSocket: frame without a blank line: %.80q", b)
	}
	var ev event
	for line := range strings.SplitSeq(head, "\n") {
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "id":
			ev.pos.id = v
		case "gap":
			ev.gap = v
		}
	}
	if ev.pos.id == "" {
		return event{}, fmt.Errorf("WebSocket: frame without id: %.80q", b)
	}
	ev.body = body
	return ev, nil
}

func (w *webSocket) close() { w.conn.CloseNow() }

// counter is a number that goroutines can wait on.
type counter struct {
	mu sync.Mutex
	n  int
	ch chan struct{} // closed at the next change
}

func newCounter() *counter { return &counter{ch: make(chan struct{})} }

func (c *counter) set(n int) {
	c.mu.Lock()
	c.n = n
	close(c.ch)
	c.ch = make(chan struct{})
	c.mu.Unlock()
}

func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// wait waits until the number is at least n, or ctx ends.
func (c *counter) wait(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		v, ch := c.n, c.ch
		c.mu.Unlock()
		if v >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d (at %d): %w", n, v, ctx.Err())
		}
	}
}

// body is a message's body: its sequence number and send time.
func body(seq int) string {
	return "seq=" + strconv.Itoa(seq) + " ts=" + strconv.FormatInt(time.Now().UnixNano(), 10)
}

// parseBody returns the sequence number and send time in a body.
func parseBody(b string) (seq int, sent time.Time, err error) {
	s, ts, ok := strings.Cut(b, " ts=")
	s, ok2 := strings.CutPrefix(s, "seq=")
	if !ok || !ok2 {
		return 0, time.Time{}, fmt.Errorf("body %.60q", b)
	}
	n, err1 := strconv.Atoi(s)
	ns, err2 := strconv.ParseInt(ts, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, time.Time{}, fmt.Errorf("body %.60q: %w", b, err)
	}
	return n, time.Unix(0, ns), nil
}

// waitFor polls cond every few milliseconds until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// subscribers returns the channel's listener count, or -1.
func subscribers(r relay.Relay, ch string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := r.Info(ctx, ch)
	if err != nil {
		return -1
	}
	return info.Listeners
}

// envOr returns the environment variable k, or def if it is empty.
func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
