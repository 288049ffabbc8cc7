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
	"testing"
	"time"
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
// ServeSubscriber returns.
func serveWith(t *testing.T, opts Options, wrap func(http.ResponseWriter) http.ResponseWriter) (*Hub, *httptest.Server, chan struct{}) {
	t.Helper()
	h := New(opts)
	returned := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App", "before")
		h.ServeSubscriber(wrap(w), r, strings.TrimPrefix(r.URL.Path, "/sub/"))
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
// events published after ServeSubscriber returned.
func TestEventSourceHijacked(t *testing.T) {
	h, srv, returned := serveWith(t, Options{}, func(w http.ResponseWriter) http.ResponseWriter { return &cookieWriter{w} })
	mustOpen(t, h, ch)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /sub/%s HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\n\r\n", ch)
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
	waitChan(t, returned, "ServeSubscriber to return")
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
// possible: HTTP/2, and a wrapper that cannot hijack. ServeSubscriber then
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
			t.Fatal("ServeSubscriber returned while its stream goes on")
		default:
		}
		h.Close(context.Background(), ch)
		if ev := s.next(t); ev.comment != ":410: 410 Gone" {
			t.Errorf("got %+v, want the 410 comment", ev)
		}
		waitChan(t, returned, "ServeSubscriber to return")
	}

	t.Run("HTTP/2", func(t *testing.T) {
		h := New(Options{})
		returned := make(chan struct{}, 1)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeSubscriber(w, r, strings.TrimPrefix(r.URL.Path, "/sub/"))
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
