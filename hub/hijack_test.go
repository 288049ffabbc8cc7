package hub

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// cookieWriter is a ResponseWriter wrapper like the root package's
// middleware: it adds a header when the response starts, or when the
// connection is hijacked.
type cookieWriter struct {
	http.ResponseWriter
}

func (w *cookieWriter) start() { w.Header().Add("Set-Cookie", "s=1") }

func (w *cookieWriter) WriteHeader(code int) {
	w.start()
	w.ResponseWriter.WriteHeader(code)
}

func (w *cookieWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.start()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *cookieWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// flushOnly can flush but neither hijack nor unwrap.
type flushOnly struct {
	w http.ResponseWriter
}

func (w flushOnly) Header() http.Header         { return w.w.Header() }
func (w flushOnly) Write(b []byte) (int, error) { return w.w.Write(b) }
func (w flushOnly) WriteHeader(code int)        { w.w.WriteHeader(code) }
func (w flushOnly) Flush()                      { http.NewResponseController(w.w).Flush() }

// serveWith returns a hub and a server whose handler wraps the
// ResponseWriter with wrap and reports on returned each time
// ServeListener returns.
func serveWith(t *testing.T, opts Options, wrap func(http.ResponseWriter) http.ResponseWriter) (*Hub, *httptest.Server, chan struct{}) {
	t.Helper()
	h := New(opts)
	returned := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "before")
		h.ServeListener(wrap(w), r, strings.TrimPrefix(r.URL.Path, "/sub/"))
		returned <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	return h, srv, returned
}

func waitChan(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestEventSourceHijacked reads a hijacked stream off the wire: its status
// line and headers, those the application and a wrapper set included, and
// events published after ServeListener returned.
func TestEventSourceHijacked(t *testing.T) {
	h, srv, returned := serveWith(t, Options{}, func(w http.ResponseWriter) http.ResponseWriter { return &cookieWriter{w} })
	mustOpen(t, h, ch)
	conn := dialEventSource(t, srv.Listener.Addr().String())
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Content-Type":      "text/event-stream; charset=utf-8",
		"Cache-Control":     "no-store",
		"X-Accel-Buffering": "no",
		"Set-Cookie":        "s=1",
		"X-App":             "before",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	// ReadResponse takes "Connection: close" into resp.Close.
	if resp.StatusCode != http.StatusOK || resp.ContentLength != -1 || resp.TransferEncoding != nil || !resp.Close {
		t.Errorf("status %d, length %d, encoding %v, close %v: want 200 delimited by the close",
			resp.StatusCode, resp.ContentLength, resp.TransferEncoding, resp.Close)
	}
	if resp.Header.Get("Date") == "" {
		t.Error("no Date header")
	}
	s := &stream{resp: resp, r: bufio.NewReader(resp.Body)}
	if ev := s.next(t); ev.comment != ": hi" {
		t.Fatalf("stream starts with %+v", ev)
	}
	waitChan(t, returned, "ServeListener to return")
	r := mustPublish(t, h, ch, text("after return"))
	if ev := s.next(t); ev.id != r.ID || ev.data != "after return" {
		t.Errorf("got %+v, want %s", ev, r.ID)
	}
	if n := h.Stats().Listeners.EventSource; n != 1 {
		t.Errorf("%d EventSource listeners, want 1", n)
	}
	if err := h.Close(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	if ev := s.next(t); ev.comment != ":410: 410 Gone" {
		t.Errorf("got %+v, want the 410 comment", ev)
	}
	if _, err := s.read(); err != io.EOF {
		t.Errorf("after 410: %v, want EOF (the connection closed)", err)
	}
}

// TestEventSourcePeerGone closes an idle listener's connection: the stream
// notices without writing and leaves the channel.
func TestEventSourcePeerGone(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	mustOpen(t, h, ch)
	req, _ := http.NewRequest("GET", srv.URL+"/sub/"+ch, nil)
	req.Header.Set("Accept", "text/event-stream")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	waitListeners(t, h, ch, 1)
	resp.Body.Close()
	waitListeners(t, h, ch, 0)
	s := h.Stats()
	if s.Listeners.EventSource != 0 || s.WriteFailures != 0 || s.SlowDisconnects != 0 {
		t.Errorf("stats %+v: want no listener and no failed write", s)
	}
}

// TestEventSourceNotHijacked serves streams where hijacking is not
// possible: HTTP/2, and a wrapper that cannot hijack. ServeListener then
// returns only when the stream ends.
func TestEventSourceNotHijacked(t *testing.T) {
	check := func(t *testing.T, h *Hub, client *http.Client, url string, returned chan struct{}, proto int) {
		mustOpen(t, h, ch)
		req, _ := http.NewRequest("GET", url+"/sub/"+ch, nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != proto || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("HTTP/%d %d close %v, want HTTP/%d 200 on a connection that stays open",
				resp.ProtoMajor, resp.StatusCode, resp.Close, proto)
		}
		s := &stream{resp: resp, r: bufio.NewReader(resp.Body)}
		if ev := s.next(t); ev.comment != ": hi" {
			t.Fatalf("stream starts with %+v", ev)
		}
		r := mustPublish(t, h, ch, text("x"))
		if ev := s.next(t); ev.id != r.ID {
			t.Errorf("got %+v, want %s", ev, r.ID)
		}
		select {
		case <-returned:
			t.Fatal("ServeListener returned while its stream goes on")
		default:
		}
		h.Close(context.Background(), ch)
		if ev := s.next(t); ev.comment != ":410: 410 Gone" {
			t.Errorf("got %+v, want the 410 comment", ev)
		}
		waitChan(t, returned, "ServeListener to return")
	}

	t.Run("HTTP/2", func(t *testing.T) {
		h := New(Options{})
		returned := make(chan struct{}, 1)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeListener(w, r, strings.TrimPrefix(r.URL.Path, "/sub/"))
			returned <- struct{}{}
		}))
		srv.EnableHTTP2 = true
		srv.StartTLS()
		defer srv.Close()
		defer h.Shutdown(context.Background())
		client := srv.Client()
		defer client.CloseIdleConnections()
		check(t, h, client, srv.URL, returned, 2)
	})

	t.Run("no Hijacker", func(t *testing.T) {
		h, srv, returned := serveWith(t, Options{}, func(w http.ResponseWriter) http.ResponseWriter { return flushOnly{w} })
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		check(t, h, &http.Client{Transport: tr}, srv.URL, returned, 1)
	})
}

// TestConnWriter writes through a connection without a socket (as TLS
// connections are): every write waits within the timeout.
func TestConnWriter(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	w := newConnWriter(server, 50*time.Millisecond)
	if w.fast != nil {
		t.Fatal("a pipe has no socket to write to at once")
	}
	got := make(chan []byte)
	go func() {
		b := make([]byte, 5)
		io.ReadFull(client, b)
		got <- b
	}()
	if err := w.write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "hello" {
		t.Errorf("read %q", b)
	}
	if err := w.write([]byte("nobody reads")); !isTimeout(err) {
		t.Errorf("write nobody reads: %v, want a timeout", err)
	}
}

// TestConnWriterPastDeadline writes on a TCP connection whose write
// deadline, set by an earlier write that had to wait, has passed.
func TestConnWriterPastDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	w := newConnWriter(server, time.Second)
	if runtime.GOOS == "linux" && w.fast == nil {
		t.Fatal("a TCP connection writes at once")
	}
	server.SetWriteDeadline(time.Now().Add(-time.Second))
	if err := w.write([]byte("late")); err != nil {
		t.Fatalf("write after the deadline passed: %v", err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(client, b); err != nil || string(b) != "late" {
		t.Errorf("read %q (%v)", b, err)
	}
}

// parkedCount returns the number of idle hijacked streams of channel.
func parkedCount(h *Hub, channel string) int {
	h.mu.RLock()
	c := h.channels[channel]
	h.mu.RUnlock()
	if c == nil {
		return -1
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.parked)
}

// TestStreamsConcurrentPublish publishes from several goroutines to a
// channel whose hijacked streams are parked, dispatched (inline and in
// batches) and caught up all at once: each stream gets every message once,
// in order.
func TestStreamsConcurrentPublish(t *testing.T) {
	for _, listeners := range []int{2, 20} { // Publish writes itself; dispatchers do
		t.Run(fmt.Sprint(listeners), func(t *testing.T) {
			const publishers, each = 4, 50
			h, srv := newTestHub(t, Options{BufferLength: publishers * each, MaxListeners: -1})
			h.dispatchChunk = 8 // 20 streams: three dispatching goroutines
			mustOpen(t, h, ch)
			streams := make([]*stream, listeners)
			for i := range streams {
				streams[i] = openStream(t, srv.URL+"/sub/"+ch, nil)
			}
			eventually(t, "parked streams", func() bool { return parkedCount(h, ch) == listeners })
			var wg sync.WaitGroup
			for range publishers {
				wg.Go(func() {
					for range each {
						if _, err := h.Publish(context.Background(), ch, text("x")); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			for i, s := range streams {
				var last relay.MessageID
				for n := range publishers * each {
					ev := s.next(t)
					id, err := relay.ParseMessageID(ev.id)
					if err != nil || ev.name != "" || id.Compare(last) <= 0 {
						t.Fatalf("stream %d, event %d: %+v after %s", i, n, ev, last)
					}
					last = id
				}
			}
			eventually(t, "streams parked again", func() bool { return parkedCount(h, ch) == listeners })
			if s := h.Stats(); s.Deliveries != uint64(listeners*publishers*each) || s.Gaps != 0 {
				t.Errorf("%d deliveries, %d gaps; want %d and 0", s.Deliveries, s.Gaps, listeners*publishers*each)
			}
		})
	}
}

// TestStreamParkedGap parks a stream that resumed after a message never
// buffered: the next message comes after a gap event.
func TestStreamParkedGap(t *testing.T) {
	h, srv := newTestHub(t, Options{BufferLength: -1})
	mustOpen(t, h, ch)
	r0 := mustPublish(t, h, ch, text("a"))
	mustPublish(t, h, ch, text("b"))
	s := openStream(t, srv.URL+"/sub/"+ch, http.Header{"Last-Event-Id": {r0.ID}})
	eventually(t, "a parked stream", func() bool { return parkedCount(h, ch) == 1 })
	r2 := mustPublish(t, h, ch, text("c"))
	if ev := s.next(t); ev.name != "gap" || ev.data != r0.ID {
		t.Errorf("got %+v, want a gap after %s", ev, r0.ID)
	}
	if ev := s.next(t); ev.id != r2.ID {
		t.Errorf("got %+v, want %s", ev, r2.ID)
	}
	eventually(t, "parked again", func() bool { return parkedCount(h, ch) == 1 })
	r3 := mustPublish(t, h, ch, text("d"))
	if ev := s.next(t); ev.id != r3.ID || ev.name != "" {
		t.Errorf("got %+v, want %s without a gap", ev, r3.ID)
	}
}

// statusRecorder is an access log's ResponseWriter wrapper, as router
// middleware (chi's Logger, for one) wraps the listening endpoint: it
// records the status written, and unwraps for http.ResponseController.
type statusRecorder struct {
	http.ResponseWriter
	status atomic.Int32
}

func (w *statusRecorder) WriteHeader(code int) {
	w.status.Store(int32(code))
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestHijackedStreamStatusLogged: an access log around the endpoint records
// 200 for an EventSource stream, although the hub takes the connection
// over, and the stream still works: its header is net/http's, without
// chunked encoding, and its events follow.
func TestHijackedStreamStatusLogged(t *testing.T) {
	h := New(Options{Heartbeat: -1})
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	logged := make(chan *statusRecorder, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeListener(rec, r, ch)
		logged <- rec
	}))
	t.Cleanup(srv.Close)
	mustOpen(t, h, ch)
	s := openStream(t, srv.URL, nil)
	rec := <-logged // ServeListener returned: the stream goes on without it
	if got := rec.status.Load(); got != http.StatusOK {
		t.Errorf("the access log recorded status %d, want 200", got)
	}
	if te := s.resp.TransferEncoding; len(te) != 0 || s.resp.Header.Get("Content-Type") != eventStreamType || !s.resp.Close {
		t.Errorf("stream header: Transfer-Encoding %q, Content-Type %q, Close %v; want none, "+eventStreamType+", true",
			te, s.resp.Header.Get("Content-Type"), s.resp.Close)
	}
	id := mustPublish(t, h, ch, text("after")).ID
	if ev := s.next(t); ev.id != id || ev.data != "after" {
		t.Errorf("got %+v, want %s", ev, id)
	}
	if h.Stats().Listeners.EventSource != 1 {
		t.Errorf("listeners %+v, want the hijacked stream", h.Stats().Listeners)
	}
}
