package hub

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// tlsProto is how a test server over TLS speaks HTTP.
type tlsProto struct {
	name  string
	http2 bool
}

var tlsProtos = []tlsProto{{"tls-http1", false}, {"http2", true}}

// newTLSHub returns a hub and a server over TLS on 127.0.0.1 with its
// subscriber endpoint at /sub/{channel}, offering HTTP/2 or only HTTP/1.1,
// with the server's own WriteTimeout set to serverWriteTimeout; its
// Client() trusts the server's certificate and speaks HTTP/2 when offered.
// Cleanup shuts the hub down before closing the server.
func newTLSHub(t testing.TB, p tlsProto, opts Options, serverWriteTimeout time.Duration) (*Hub, *httptest.Server) {
	t.Helper()
	h := New(opts)
	mux := http.NewServeMux()
	mux.HandleFunc("/sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		want := 1
		if p.http2 && !isWebSocket(r) {
			want = 2
		}
		if r.ProtoMajor != want {
			t.Errorf("%s request over %s", p.name, r.Proto)
		}
		h.ServeListener(w, r, r.PathValue("channel"))
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = p.http2
	srv.Config.WriteTimeout = serverWriteTimeout
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	return h, srv
}

// openStreamWith is openStream with client.
func openStreamWith(t testing.TB, client *http.Client, url string) *stream {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d, want 200", resp.StatusCode)
	}
	s := &stream{resp: resp, r: bufio.NewReader(resp.Body)}
	if ev := s.next(t); ev.comment != ": hi" {
		t.Fatalf("stream starts with %+v, want \": hi\"", ev)
	}
	return s
}

// TestTLSIdleListeners: over TLS with HTTP/1.1 and over HTTP/2, with no
// heartbeat, EventSource, long-poll and WebSocket listeners stay connected
// through twice Options.WriteTimeout (and twice the server's own
// WriteTimeout) of silence, and get the next message, once: the deadline of
// a write covers that write only, and a wait has none. Over HTTP/2 a
// deadline left set resets the stream when it passes.
func TestTLSIdleListeners(t *testing.T) {
	const writeTimeout = 150 * time.Millisecond
	// Let the deadlines pass: the condition under test, not a
	// synchronisation.
	silence := func() { time.Sleep(2 * writeTimeout) }
	for _, p := range tlsProtos {
		t.Run(p.name, func(t *testing.T) {
			h, srv := newTLSHub(t, p, Options{WriteTimeout: writeTimeout, Heartbeat: -1, LongPollTimeout: -1}, writeTimeout)
			client := srv.Client()
			t.Cleanup(client.CloseIdleConnections)
			noCut := func(t *testing.T) {
				t.Helper()
				if d := h.Stats().Disconnects; d != (DisconnectCounts{}) {
					t.Errorf("Stats().Disconnects = %+v, want none", d)
				}
			}

			t.Run("eventsource", func(t *testing.T) {
				c := "es-" + p.name
				cursor := mustOpen(t, h, c)
				s := openStreamWith(t, client, srv.URL+"/sub/"+c+"?last_event_id="+cursor)
				for i := range 2 {
					silence()
					if n := h.Stats().Listeners.EventSource; n != 1 {
						t.Fatalf("after %v of silence: %d EventSource listeners, want 1", 2*writeTimeout, n)
					}
					r := mustPublish(t, h, c, text(fmt.Sprint("late ", i)))
					if ev := s.next(t); ev.id != r.ID || ev.data != fmt.Sprint("late ", i) {
						t.Fatalf("event %+v, want id %s", ev, r.ID)
					}
				}
				noCut(t)
			})

			t.Run("longpoll", func(t *testing.T) {
				c := "lp-" + p.name
				mustOpen(t, h, c)
				type result struct {
					code       int
					body, etag string
					lastMod    string
					err        error
				}
				poll := func(header http.Header) <-chan result {
					done := make(chan result, 1)
					go func() {
						req, _ := http.NewRequest("GET", srv.URL+"/sub/"+c, nil)
						for k, v := range header {
							req.Header[k] = v
						}
						resp, err := client.Do(req)
						if err != nil {
							done <- result{err: err}
							return
						}
						defer resp.Body.Close()
						b, err := io.ReadAll(resp.Body)
						done <- result{resp.StatusCode, string(b), resp.Header.Get("Etag"), resp.Header.Get("Last-Modified"), err}
					}()
					return done
				}
				first := poll(nil)
				waitListeners(t, h, c, 1)
				silence()
				if n := mustInfo(t, h, c).Listeners; n != 1 {
					t.Fatalf("after %v of silence: %d listeners, want 1", 2*writeTimeout, n)
				}
				mustPublish(t, h, c, text("late"))
				r := <-first
				if r.err != nil || r.code != 200 || r.body != "late" {
					t.Fatalf("got %d %q %v, want 200 \"late\"", r.code, r.body, r.err)
				}
				// Once: the next poll from there waits for the next message.
				second := poll(http.Header{"If-Modified-Since": {r.lastMod}, "If-None-Match": {r.etag}})
				waitListeners(t, h, c, 1)
				silence()
				mustPublish(t, h, c, text("later"))
				if r := <-second; r.err != nil || r.code != 200 || r.body != "later" {
					t.Fatalf("got %d %q %v, want 200 \"later\"", r.code, r.body, r.err)
				}
				noCut(t)
			})

			t.Run("websocket", func(t *testing.T) {
				c := "ws-" + p.name
				mustOpen(t, h, c)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				// A transport of its own: an idle connection left by the
				// subtests before could be closed by the server just as
				// the handshake reuses it, which is not under test here.
				tr := client.Transport.(*http.Transport).Clone()
				t.Cleanup(tr.CloseIdleConnections)
				conn, _, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(srv.URL, "https")+"/sub/"+c,
					&websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
				if err != nil {
					t.Fatal(err)
				}
				defer conn.CloseNow()
				waitListeners(t, h, c, 1)
				for i := range 2 {
					silence()
					if n := h.Stats().Listeners.WebSocket; n != 1 {
						t.Fatalf("after %v of silence: %d WebSocket listeners, want 1", 2*writeTimeout, n)
					}
					mustPublish(t, h, c, text(fmt.Sprint("late ", i)))
					if f := readFrame(t, conn); f.data != fmt.Sprint("late ", i) {
						t.Fatalf("frame %q, want %q", f.data, fmt.Sprint("late ", i))
					}
				}
				noCut(t)
			})
		})
	}
}
