package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/relay"
)

// wsURL is the WebSocket address of channel's subscriber endpoint on srv.
func wsURL(srv *httptest.Server, channel string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/sub/" + channel
}

// dialWS connects a WebSocket listener, fails the test if the handshake is
// refused, and closes the connection at cleanup. The connection reads
// messages of any size.
func dialWS(t testing.TB, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, code)
	}
	t.Cleanup(func() { conn.CloseNow() })
	conn.SetReadLimit(-1)
	return conn
}

// frame is one WebSocket message as a client reads it.
type frame struct {
	typ  websocket.MessageType
	data string
}

func readFrame(t testing.TB, conn *websocket.Conn) frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return frame{typ, string(b)}
}

// checkGone reads the end of conn: the close status 1001 with reason
// "410 Gone". Safe in any goroutine.
func checkGone(t testing.TB, conn *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := conn.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || ce.Reason != "410 Gone" {
		t.Errorf("read %q (%v), want the close 1001 \"410 Gone\"", b, err)
	}
}

// upgrade returns the headers of a WebSocket handshake, with extra added.
func upgrade(extra http.Header) http.Header {
	h := http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

func TestWebSocket(t *testing.T) {
	const binary = "application/octet-stream"
	msgs := []relay.Message{
		{Body: []byte("plain"), ContentType: "text/plain"},
		{Body: []byte{0, 1, 0xfe, 0xff}, ContentType: binary},
		{},
		{Body: []byte(`{"n":4}`), ContentType: "application/json", Event: "upd"},
		{Body: []byte("two\n\nlines")},
		{ContentType: binary},
	}
	types := []websocket.MessageType{
		websocket.MessageText, websocket.MessageBinary, websocket.MessageText,
		websocket.MessageText, websocket.MessageText, websocket.MessageBinary,
	}
	tests := []struct {
		name         string
		subprotocols []string
		meta         bool
	}{
		{"plain", nil, false},
		{"ws+meta.nchan", []string{"ws+meta.nchan"}, true},
		{"ws+meta.nchan among others", []string{"chat", "ws+meta.nchan"}, true},
		{"ws+meta.nchan in another case", []string{"WS+Meta.Nchan"}, true},
		{"unknown subprotocol", []string{"chat"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, srv := newTestHub(t, Options{Heartbeat: -1})
			mustOpen(t, h, ch)
			mustPublish(t, h, ch, text("before the cursor"))
			cursor := mustOpen(t, h, ch)

			// The first half is buffered before the listener connects,
			// the rest is published while it listens.
			var ids []string
			for _, m := range msgs[:3] {
				ids = append(ids, mustPublish(t, h, ch, m).ID)
			}
			conn := dialWS(t, wsURL(srv, ch)+"?last_event_id="+cursor, &websocket.DialOptions{Subprotocols: tt.subprotocols})
			if got := conn.Subprotocol(); strings.EqualFold(got, "ws+meta.nchan") != tt.meta || !tt.meta && got != "" {
				t.Fatalf("subprotocol %q, want ws+meta.nchan: %v", got, tt.meta)
			}
			for _, m := range msgs[3:] {
				ids = append(ids, mustPublish(t, h, ch, m).ID)
			}
			for i, m := range msgs {
				want := frame{types[i], string(m.Body)}
				if tt.meta {
					want.data = "id: " + ids[i] + "\n"
					if m.ContentType != "" {
						want.data += "content-type: " + m.ContentType + "\n"
					}
					want.data += "\n" + string(m.Body)
				}
				if got := readFrame(t, conn); got != want {
					t.Errorf("frame %d = %v %q, want %v %q", i, got.typ, got.data, want.typ, want.data)
				}
			}
		})
	}
}

func TestWebSocketHandshake(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	mustOpen(t, h, ch)
	req, err := http.NewRequest("GET", srv.URL+"/sub/"+ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = upgrade(http.Header{"Sec-Websocket-Protocol": {"ws+meta.nchan"}})
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" || // RFC 6455, section 1.3
		resp.Header.Get("Sec-Websocket-Protocol") != "ws+meta.nchan" {
		t.Errorf("got %d %v, want 101 with the accept key and ws+meta.nchan", resp.StatusCode, resp.Header)
	}
	checkCommonHeaders(t, resp.Header, false)
	waitListeners(t, h, ch, 1)
}

func TestWebSocketResume(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	url := wsURL(srv, ch)
	mustOpen(t, h, ch)
	first := mustPublish(t, h, ch, text("first"))
	cursor := mustOpen(t, h, ch)
	mustPublish(t, h, ch, text("second"))
	tests := []struct {
		name   string
		url    string
		header http.Header
		want   string // the first frame
	}{
		{"the empty channel's cursor: from the oldest", url, http.Header{"Last-Event-Id": {relay.NoCursor}}, "first"},
		{"Last-Event-ID", url, http.Header{"Last-Event-Id": {first.ID}}, "second"},
		{"query", url + "?last_event_id=" + first.ID, nil, "second"},
		{"cursor from Open", url + "?last_event_id=" + cursor, nil, "second"},
		{"Last-Event-ID before query", url + "?last_event_id=" + cursor, http.Header{"Last-Event-Id": {relay.NoCursor}}, "first"},
		{"If-Modified-Since ignored", url + "?last_event_id=" + first.ID, http.Header{"If-Modified-Since": {"junk"}}, "second"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialWS(t, tt.url, &websocket.DialOptions{HTTPHeader: tt.header})
			if f := readFrame(t, conn); f.data != tt.want {
				t.Errorf("first frame %q, want %q", f.data, tt.want)
			}
			if err := conn.Close(websocket.StatusNormalClosure, ""); err != nil {
				t.Errorf("close: %v", err)
			}
			waitListeners(t, h, ch, 0)
		})
	}
}

func TestWebSocketClose(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	mustOpen(t, h, ch)
	plain := dialWS(t, wsURL(srv, ch), nil)
	meta := dialWS(t, wsURL(srv, ch), &websocket.DialOptions{Subprotocols: []string{"ws+meta.nchan"}})
	waitListeners(t, h, ch, 2)
	if err := h.Close(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	checkGone(t, plain)
	checkGone(t, meta)
}

// TestWebSocketShutdown checks that Shutdown closes every WebSocket with
// 1001 and returns only after the hub's goroutines and those coder/websocket
// started for it have ended.
func TestWebSocketShutdown(t *testing.T) {
	const n = 50
	before := runtime.NumGoroutine()
	h := New(Options{MaxListeners: -1})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, ch)
	}))
	tr := &http.Transport{}
	client := &http.Client{Transport: tr}
	mustOpen(t, h, ch)

	var wg sync.WaitGroup
	for i := range n {
		opts := &websocket.DialOptions{HTTPClient: client}
		if i%2 == 1 {
			opts.Subprotocols = []string{"ws+meta.nchan"}
		}
		conn := dialWS(t, wsURL(srv, ch), opts)
		wg.Go(func() { checkGone(t, conn) }) // the client reads, so it answers the close
	}
	waitListeners(t, h, ch, n)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// No listener is left, and no goroutine that coder/websocket reads with
	// for one (the clients use Read, so those are the server's) is doing
	// anything: CloseRead's goroutine signals its end with a deferred
	// close, so it may still be seen at its last line, calling nothing.
	for _, g := range strings.Split(goroutineStacks(), "\n\n") {
		lines := strings.SplitN(g, "\n", 3) // "goroutine N [state]:", the top call, the rest
		if len(lines) < 2 {
			continue
		}
		top := lines[1] // "pkg.(*T).method(args)": the call without its arguments
		if i := strings.LastIndex(top, "("); i >= 0 {
			top = top[:i]
		}
		if strings.Contains(g, "hub.(*listener).webSocket(") ||
			strings.Contains(g, "websocket.(*Conn).CloseRead.func1(") && !strings.HasSuffix(top, "CloseRead.func1") {
			t.Errorf("still running after Shutdown:\n%s", g)
		}
	}
	wg.Wait()

	srv.Close()
	tr.CloseIdleConnections()
	eventually(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

func goroutineStacks() string {
	for buf := make([]byte, 1<<20); ; buf = make([]byte, 2*len(buf)) {
		if n := runtime.Stack(buf, true); n < len(buf) {
			return string(buf[:n])
		}
	}
}

func TestWebSocketRefusals(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/" + ch
	tests := []struct {
		name   string
		method string
		url    string
		header http.Header
		want   int
	}{
		{"never opened", "GET", srv.URL + "/sub/other", upgrade(nil), http.StatusForbidden},
		{"invalid channel id", "GET", srv.URL + "/sub/a%20b", upgrade(nil), http.StatusBadRequest},
		{"junk last_event_id", "GET", url + "?last_event_id=x", upgrade(nil), http.StatusBadRequest},
		{"junk Last-Event-ID", "GET", url, upgrade(http.Header{"Last-Event-Id": {"1:x"}}), http.StatusBadRequest},
		{"foreign Origin", "GET", url, upgrade(http.Header{"Origin": {"https://evil.example"}}), http.StatusForbidden},
		{"POST", "POST", url, upgrade(nil), http.StatusMethodNotAllowed},
		{"version 8", "GET", url, upgrade(http.Header{"Sec-Websocket-Version": {"8"}}), http.StatusBadRequest},
		{"no key", "GET", url, upgrade(http.Header{"Sec-Websocket-Key": nil}), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRefusal(t, get(srv.Client(), tt.method, tt.url, tt.header), tt.want, false)
		})
	}
	if n := mustInfo(t, h, ch).Listeners; n != 0 {
		t.Errorf("%d listeners left by refusals", n)
	}
}

// TestWebSocketMaxListeners checks that WebSocket listeners count towards
// the cap with the others.
func TestWebSocketMaxListeners(t *testing.T) {
	h, srv := newTestHub(t, Options{MaxListeners: 2, Heartbeat: -1})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/" + ch
	openStream(t, url, nil)
	conn := dialWS(t, wsURL(srv, ch), nil)
	waitListeners(t, h, ch, 2)
	for _, header := range []http.Header{upgrade(nil), {"Accept": {"text/event-stream"}}, nil} {
		if a := get(srv.Client(), "GET", url, header); a.code != http.StatusForbidden {
			t.Errorf("third listener (%v): %d, want 403", header, a.code)
		}
	}
	if _, resp, err := websocket.Dial(context.Background(), wsURL(srv, ch), nil); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("third listener dialing: %v, want 403", err)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	waitListeners(t, h, ch, 1)
	dialWS(t, wsURL(srv, ch), nil)
	waitListeners(t, h, ch, 2)
}

func TestWebSocketOrigin(t *testing.T) {
	defer log.SetOutput(log.Writer())
	log.SetOutput(io.Discard) // coder/websocket logs malformed patterns with the log package

	tests := []struct {
		name     string
		patterns []string
		origin   string // "self": the server's own
		ok       bool
	}{
		{"no Origin", nil, "", true},
		{"same host", nil, "self", true},
		{"other host", nil, "https://evil.example", false},
		{"other port", nil, "http://127.0.0.1:1", false},
		{"opaque", nil, "null", false},
		{"allowed host", []string{"app.example"}, "https://app.example", true},
		{"allowed, any case", []string{"APP.example"}, "https://app.EXAMPLE", true},
		{"wildcard", []string{"*.example"}, "https://a.example", true},
		{"wildcard, other domain", []string{"*.example"}, "https://example.org", false},
		{"pattern with scheme", []string{"https://app.example"}, "https://app.example", true},
		{"pattern with another scheme", []string{"https://app.example"}, "http://app.example", false},
		{"malformed pattern", []string{"["}, "https://app.example", false},
		{"same host with patterns", []string{"app.example"}, "self", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			patterns := tt.patterns
			h, srv := newTestHub(t, Options{OriginPatterns: patterns, Heartbeat: -1})
			if patterns != nil {
				patterns[0] = "*" // New keeps its own copy
			}
			mustOpen(t, h, ch)
			header := http.Header{}
			switch tt.origin {
			case "":
			case "self":
				header.Set("Origin", srv.URL)
			default:
				header.Set("Origin", tt.origin)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, resp, err := websocket.Dial(ctx, wsURL(srv, ch), &websocket.DialOptions{HTTPHeader: header})
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				conn.Close(websocket.StatusNormalClosure, "")
				return
			}
			if err == nil {
				conn.CloseNow()
				t.Fatal("accepted, want 403")
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("refused with %v, want 403", err)
			}
		})
	}
}

// TestWebSocketStalled connects a WebSocket listener that never reads, next
// to one that does, and publishes far more than socket buffers hold.
func TestWebSocketStalled(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 128<<10)
	stallers := []struct {
		name string
		dial func(t *testing.T, srv *httptest.Server) (stop func())
	}{
		{"raw connection", func(t *testing.T, srv *httptest.Server) func() {
			c, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(c, "GET /sub/%s HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", ch)
			return func() { c.Close() }
		}},
		{"websocket.Conn never read", func(t *testing.T, srv *httptest.Server) func() {
			conn := dialWS(t, wsURL(srv, ch), nil)
			return func() { conn.CloseNow() }
		}},
	}
	run := func(t *testing.T, h *Hub, srv *httptest.Server, dial func(*testing.T, *httptest.Server) func(), until func(i int) bool) (stop func()) {
		t.Helper()
		mustOpen(t, h, ch)
		stop = dial(t, srv)
		waitListeners(t, h, ch, 1)
		conn := dialWS(t, wsURL(srv, ch), nil)
		for i := 0; !until(i); i++ {
			mustPublish(t, h, ch, relay.Message{Body: body})
			if f := readFrame(t, conn); len(f.data) != len(body) {
				t.Fatalf("message %d: got %d bytes, want %d", i, len(f.data), len(body))
			}
		}
		return stop
	}
	for _, s := range stallers {
		t.Run(s.name, func(t *testing.T) {
			t.Run("publish does not wait", func(t *testing.T) {
				h, srv := newTestHub(t, Options{Heartbeat: -1, WriteTimeout: -1})
				stop := run(t, h, srv, s.dial, func(i int) bool { return i == 256 }) // 32 MiB
				if n := mustInfo(t, h, ch).Listeners; n != 2 {
					t.Errorf("%d listeners, want the stalled one still there", n)
				}
				stop()
				waitListeners(t, h, ch, 1)
			})
			t.Run("dropped after WriteTimeout", func(t *testing.T) {
				// The reading listener must keep up within WriteTimeout, on a loaded machine.
				h, srv := newTestHub(t, Options{Heartbeat: -1, WriteTimeout: 500 * time.Millisecond})
				run(t, h, srv, s.dial, func(i int) bool {
					if i > 10000 {
						t.Fatal("the stalled listener was never disconnected")
					}
					return mustInfo(t, h, ch).Listeners == 1
				})
			})
		})
	}
}

// pipeNet is an in-memory network for synctest bubbles, where real sockets
// would keep the clock from advancing: its listener takes the server ends
// of net.Pipe connections that its dial makes.
type pipeNet struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeNet() *pipeNet {
	return &pipeNet{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (p *pipeNet) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.closed:
		return nil, net.ErrClosed
	}
}

func (p *pipeNet) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *pipeNet) Addr() net.Addr { return pipeAddr{} }

func (p *pipeNet) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case p.conns <- server:
		return client, nil
	case <-p.closed:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// dialPipe serves h's listeners of ch on an in-memory network and connects
// one WebSocket to it with opts; call it inside a synctest bubble. Cleanup
// shuts the hub and the server down.
func dialPipe(t *testing.T, h *Hub, opts websocket.DialOptions) *websocket.Conn {
	t.Helper()
	p := newPipeNet()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, ch)
	})}
	go srv.Serve(p)
	tr := &http.Transport{DialContext: p.dial}
	t.Cleanup(func() {
		h.Shutdown(context.Background())
		srv.Close()
		tr.CloseIdleConnections()
	})
	opts.HTTPClient = &http.Client{Transport: tr}
	conn, _, err := websocket.Dial(context.Background(), "ws://hub/", &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// TestWebSocketHeartbeat runs in a synctest bubble over net.Pipe, so that
// an hour passes at once and timeouts are exact.
func TestWebSocketHeartbeat(t *testing.T) {
	const heartbeat, writeTimeout = 15 * time.Second, 10 * time.Second

	type read struct {
		frame
		err error
	}
	// reading keeps a Read pending, as coder/websocket answers pings only
	// then, and sends what it reads, then the error that ends it.
	reading := func(conn *websocket.Conn) <-chan read {
		reads := make(chan read, 16)
		go func() {
			for {
				typ, b, err := conn.Read(context.Background())
				reads <- read{frame{typ, string(b)}, err}
				if err != nil {
					return
				}
			}
		}()
		return reads
	}

	t.Run("answered", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := New(Options{Heartbeat: heartbeat, WriteTimeout: writeTimeout})
			mustOpen(t, h, ch)
			var pings atomic.Int64
			conn := dialPipe(t, h, websocket.DialOptions{
				OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
			})
			reads := reading(conn)
			time.Sleep(time.Hour + time.Second) // an idle hour: the condition under test
			synctest.Wait()
			if n := pings.Load(); n != int64(time.Hour/heartbeat) {
				t.Errorf("%d pings in an hour, want one every %v", n, heartbeat)
			}
			if n := mustInfo(t, h, ch).Listeners; n != 1 {
				t.Fatalf("%d listeners, want the pinged one", n)
			}
			mustPublish(t, h, ch, text("still there"))
			if r := <-reads; r.err != nil || r.data != "still there" {
				t.Errorf("got %q (%v) after an idle hour", r.data, r.err)
			}
		})
	})

	t.Run("unanswered", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := New(Options{Heartbeat: heartbeat, WriteTimeout: writeTimeout})
			mustOpen(t, h, ch)
			var pings atomic.Int64
			conn := dialPipe(t, h, websocket.DialOptions{
				OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return false }, // no pong
			})
			start := time.Now()
			r := <-reading(conn)
			if d := time.Since(start); d != heartbeat+writeTimeout {
				t.Errorf("dropped after %v, want the heartbeat then the WriteTimeout: %v", d, heartbeat+writeTimeout)
			}
			if pings.Load() != 1 || r.err == nil || websocket.CloseStatus(r.err) != -1 {
				t.Errorf("after %d pings read %q (%v), want the connection cut without a close frame", pings.Load(), r.data, r.err)
			}
			synctest.Wait()
			if n := mustInfo(t, h, ch).Listeners; n != 0 {
				t.Errorf("%d listeners, want none", n)
			}
		})
	})

	t.Run("none", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := New(Options{Heartbeat: -1})
			mustOpen(t, h, ch)
			var pings atomic.Int64
			conn := dialPipe(t, h, websocket.DialOptions{
				OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
			})
			reading(conn)
			time.Sleep(time.Hour)
			synctest.Wait()
			if n := pings.Load(); n != 0 {
				t.Errorf("%d pings with no heartbeat", n)
			}
		})
	})

	t.Run("write timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// net.Pipe has no buffer: a client that does not read stalls
			// the first write, which then takes exactly WriteTimeout.
			h := New(Options{Heartbeat: -1, WriteTimeout: writeTimeout})
			mustOpen(t, h, ch)
			dialPipe(t, h, websocket.DialOptions{})
			synctest.Wait()
			start := time.Now()
			mustPublish(t, h, ch, text("never read"))
			if d := time.Since(start); d != 0 {
				t.Errorf("Publish took %v", d)
			}
			time.Sleep(writeTimeout - time.Nanosecond)
			synctest.Wait()
			if n := mustInfo(t, h, ch).Listeners; n != 1 {
				t.Errorf("%d listeners before the WriteTimeout, want 1", n)
			}
			time.Sleep(time.Nanosecond)
			synctest.Wait()
			if n := mustInfo(t, h, ch).Listeners; n != 0 {
				t.Errorf("%d listeners after the WriteTimeout, want none", n)
			}
		})
	})
}

func TestMetaFrame(t *testing.T) {
	tests := []struct {
		name string
		msg  relay.Message
		want string
	}{
		{"with Content-Type", relay.Message{Body: []byte("hi"), ContentType: "text/plain"}, "id: 7:0\ncontent-type: text/plain\n\nhi"},
		{"without", text("hi"), "id: 7:0\n\nhi"},
		{"empty", relay.Message{}, "id: 7:0\n\n"},
		{"blank lines in the body", text("a\n\nb\r\n"), "id: 7:0\n\na\n\nb\r\n"},
		{"event name not sent", relay.Message{Body: []byte("x"), Event: "upd"}, "id: 7:0\n\nx"},
		{"CR and LF in Content-Type", relay.Message{Body: []byte("x"), ContentType: "a/b\r\nid: 9\n"}, "id: 7:0\ncontent-type: a/b  id: 9 \n\nx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMessage(tt.msg)
			(&chanState{}).stamp(m, time.Unix(7, 0))
			if got := string(appendMetaFrame(nil, m, nil)); got != tt.want {
				t.Errorf("frame %q, want %q", got, tt.want)
			}
			// Appending to a buffer in use keeps what it holds.
			if got := string(appendMetaFrame([]byte("x"), m, nil)); got != "x"+tt.want {
				t.Errorf("appended %q, want %q", got, "x"+tt.want)
			}
		})
	}
}

// TestMessageHeldOnce checks that a message holds its body once: a body
// without line breaks inside its EventSource event, and that serving it to
// any transport does not keep another copy.
func TestMessageHeldOnce(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	mustOpen(t, h, ch)
	body := strings.Repeat("x", 1000)
	mustPublish(t, h, ch, text(body))
	h.mu.RLock()
	c := h.channels[ch]
	h.mu.RUnlock()
	c.mu.RLock()
	m := c.msgs[0]
	c.mu.RUnlock()
	if string(m.body) != body || !strings.Contains(string(m.frame), "data: "+body+"\n\n") {
		t.Fatalf("body %d bytes, frame %q…", len(m.body), m.frame[:20])
	}
	// A megabyte body costs a megabyte, not two.
	big := relay.Message{Body: bytes.Repeat([]byte("y"), 1<<20)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 8
	for range n {
		newMessage(big)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 11<<20/10 { // large objects take whole pages
		t.Errorf("a 1 MiB message allocates %d bytes", per)
	}
	if m.size > int64(len(body))+messageOverhead+int64(len("data: \n\n")+maxIDLine) {
		t.Errorf("a %d-byte body counts %d bytes", len(body), m.size)
	}
	if got := h.Stats().BufferedBytes; got != m.size {
		t.Errorf("BufferedBytes %d, want the message's %d", got, m.size)
	}
	from := http.Header{"Last-Event-Id": {relay.NoCursor}}
	readFrame(t, dialWS(t, wsURL(srv, ch), &websocket.DialOptions{HTTPHeader: from}))
	f := readFrame(t, dialWS(t, wsURL(srv, ch), &websocket.DialOptions{HTTPHeader: from, Subprotocols: []string{"ws+meta.nchan"}}))
	if want := "id: " + m.id + "\n\n" + body; f.data != want {
		t.Errorf("ws+meta.nchan frame %q…", f.data[:20])
	}
	if got := h.Stats().BufferedBytes; got != m.size {
		t.Errorf("after WebSocket listeners: BufferedBytes %d, want %d", got, m.size)
	}
}

func TestIsWebSocket(t *testing.T) {
	tests := []struct {
		name   string
		header http.Header
		want   bool
	}{
		{"handshake", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, true},
		{"any case, in lists", http.Header{"Connection": {"keep-alive, UPGRADE"}, "Upgrade": {"h2c", "WebSocket"}}, true},
		{"no Connection", http.Header{"Upgrade": {"websocket"}}, false},
		{"no Upgrade", http.Header{"Connection": {"Upgrade"}}, false},
		{"other protocol", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}}, false},
		{"not a token", http.Header{"Connection": {"upgraded"}, "Upgrade": {"websockets"}}, false},
		{"EventSource", http.Header{"Accept": {"text/event-stream"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isWebSocket(&http.Request{Header: tt.header}); got != tt.want {
				t.Errorf("isWebSocket = %v, want %v", got, tt.want)
			}
		})
	}
}
