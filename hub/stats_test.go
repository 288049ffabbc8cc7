package hub

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/relay"
)

// records is a slog.Handler that keeps what it is given.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// find returns the attributes of the first record with msg, or nil.
func (r *records) find(msg string) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Message == msg {
			attrs := map[string]string{"level": rec.Level.String()}
			rec.Attrs(func(a slog.Attr) bool {
				attrs[a.Key] = a.Value.String()
				return true
			})
			return attrs
		}
	}
	return nil
}

func TestStatsGauges(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	if s := h.Stats(); s.Channels != 0 || s.Refused != nil {
		t.Fatalf("new hub: %+v", s)
	}
	mustOpen(t, h, ch)
	mustOpen(t, h, ch) // already open: no change
	mustOpen(t, h, "other")
	if s := h.Stats(); s.Channels != 2 {
		t.Errorf("%d channels, want 2", s.Channels)
	}
	if err := h.Close(context.Background(), "other"); err != nil {
		t.Fatal(err)
	}
	if s := h.Stats(); s.Channels != 1 {
		t.Errorf("%d channels after Close, want 1", s.Channels)
	}

	url := srv.URL + "/sub/" + ch
	polled := make(chan answer, 1)
	go func() { polled <- get(http.DefaultClient, "GET", url, nil) }()
	s := openStream(t, url, nil)
	ws := dialWS(t, wsURL(srv, ch), nil)
	ws2 := dialWS(t, wsURL(srv, ch), nil)
	waitListeners(t, h, ch, 4)
	want := TransportCounts{LongPoll: 1, EventSource: 1, WebSocket: 2}
	if got := h.Stats().Listeners; got != want {
		t.Errorf("listeners %+v, want %+v", got, want)
	}
	stats := map[string]float64{}
	for _, st := range h.RelayStats() {
		key := st.Name
		for _, l := range st.Labels {
			key += "/" + l[0] + "=" + l[1]
		}
		stats[key] = st.Value
		if st.Help == "" || st.Gauge == strings.HasSuffix(st.Name, "_total") {
			t.Errorf("stat %+v: no help, or gauge with a counter's name", st)
		}
	}
	for key, v := range map[string]float64{
		"channels": 1, "listeners/transport=longpoll": 1, "listeners/transport=eventsource": 1,
		"listeners/transport=websocket": 2, "messages_published_total": 0, "deliveries_total": 0,
	} {
		if got, ok := stats[key]; !ok || got != v {
			t.Errorf("RelayStats %s = %v (%v), want %v", key, got, ok, v)
		}
	}

	mustPublish(t, h, ch, text("x"))
	if a := <-polled; a.code != 200 {
		t.Fatalf("long-poll: %d", a.code)
	}
	s.next(t)
	readFrame(t, ws)
	readFrame(t, ws2)
	ws2.Close(websocket.StatusNormalClosure, "")
	waitListeners(t, h, ch, 2)
	// A delivery is counted once written, maybe after the client has it.
	eventually(t, "4 deliveries", func() bool { return h.Stats().Deliveries == 4 })
	st := h.Stats()
	if st.Published != 1 {
		t.Errorf("published %d, want 1", st.Published)
	}
	want = TransportCounts{EventSource: 1, WebSocket: 1}
	if st.Listeners != want {
		t.Errorf("listeners %+v, want %+v", st.Listeners, want)
	}
	ws.CloseNow() // else Shutdown waits for its close handshake
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Not WriteFailures: the WebSocket cut above may or may not have been
	// noticed by a write (the close frame) before Shutdown ended it.
	if st := h.Stats(); st.Channels != 0 || st.Listeners != (TransportCounts{}) {
		t.Errorf("after Shutdown: %+v", st)
	}
}

func TestStatsRefused(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/"
	for _, c := range []struct {
		method, path string
		header       http.Header
		code         int
	}{
		{"POST", ch, nil, 405},
		{"GET", "not%20valid", nil, 400},
		{"GET", ch, http.Header{"Last-Event-Id": {"nope"}}, 400},
		{"GET", "closed-channel", nil, 403},
		{"GET", "closed-channel", http.Header{"Accept": {"text/event-stream"}}, 403},
		{"GET", "closed-channel", upgrade(nil), 403},
		{"GET", ch, upgrade(http.Header{"Origin": {"https://elsewhere.example"}}), 403},
	} {
		if a := get(http.DefaultClient, c.method, url+c.path, c.header); a.code != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, a.code, c.code)
		}
	}
	h.Shutdown(context.Background())
	if a := get(http.DefaultClient, "GET", url+ch, nil); a.code != 503 {
		t.Errorf("after Shutdown: %d, want 503", a.code)
	}
	want := map[int]uint64{400: 2, 403: 4, 405: 1, 503: 1}
	if got := h.Stats().Refused; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("refused %v, want %v", got, want)
	}
	var labels []string
	for _, st := range h.RelayStats() {
		if st.Name == "listeners_refused_total" {
			labels = append(labels, fmt.Sprintf("%s=%v", st.Labels[0][1], st.Value))
		}
	}
	if got := strings.Join(labels, " "); got != "400=2 403=4 405=1 503=1" {
		t.Errorf("RelayStats refusals %q", got)
	}
}

// stall connects a listener that reads the start of a large message, so
// that the server is in the middle of writing it, and returns the
// connection. With webSocket it is a WebSocket, else EventSource.
func stall(t *testing.T, h *Hub, addr string, webSocket bool) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hdr := "Accept: text/event-stream\r\n"
	if webSocket {
		hdr = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	}
	fmt.Fprintf(conn, "GET /sub/%s HTTP/1.1\r\nHost: hub\r\n%s\r\n", ch, hdr)
	waitListeners(t, h, ch, 1)
	mustPublish(t, h, ch, relay.Message{Body: bytes.Repeat([]byte("x"), 16<<20)})
	// Past the headers: the server is writing the message, and cannot end
	// before the client reads more.
	if _, err := io.ReadFull(conn, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	return conn
}

// TestSlowListener stalls a listener of each transport: it is disconnected
// after WriteTimeout, counted and logged; Publish and another listener go
// on meanwhile.
func TestSlowListener(t *testing.T) {
	for _, c := range []struct {
		name      string
		noHijack  bool
		webSocket bool
	}{{"eventsource", false, false}, {"eventsource on the handler", true, false}, {"websocket", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			logs := &records{}
			h, srv := newTestHub(t, Options{WriteTimeout: 200 * time.Millisecond, MaxMessageSize: -1, Heartbeat: -1, Logger: slog.New(logs)})
			h.noHijack = c.noHijack
			mustOpen(t, h, ch)
			stall(t, h, srv.Listener.Addr().String(), c.webSocket)
			for range 3 {
				mustPublish(t, h, ch, text("more")) // never waits
			}
			waitListeners(t, h, ch, 0)
			if s := h.Stats(); s.SlowDisconnects != 1 || s.WriteFailures != 0 {
				t.Errorf("slow %d, write failures %d; want 1 and 0", s.SlowDisconnects, s.WriteFailures)
			}
			tr := "eventsource"
			if c.webSocket {
				tr = "websocket"
			}
			attrs := logs.find("hub: slow listener disconnected")
			if attrs == nil || attrs["level"] != "DEBUG" || attrs["channel"] != ch || attrs["transport"] != tr {
				t.Errorf("log %v, want a debug record with channel and transport %s", attrs, tr)
			}
		})
	}
}

// TestWriteFailure resets a listener's connection in the middle of a write.
func TestWriteFailure(t *testing.T) {
	for _, noHijack := range []bool{false, true} {
		t.Run(fmt.Sprint("noHijack=", noHijack), func(t *testing.T) {
			h, srv := newTestHub(t, Options{MaxMessageSize: -1, Heartbeat: -1})
			h.noHijack = noHijack
			mustOpen(t, h, ch)
			conn := stall(t, h, srv.Listener.Addr().String(), false)
			conn.(*net.TCPConn).SetLinger(0) // close with a reset
			conn.Close()
			waitListeners(t, h, ch, 0)
			if s := h.Stats(); s.WriteFailures != 1 || s.SlowDisconnects != 0 || s.Deliveries != 0 {
				t.Errorf("write failures %d, slow %d, deliveries %d; want 1, 0, 0", s.WriteFailures, s.SlowDisconnects, s.Deliveries)
			}
		})
	}
}

// TestStatsDisconnects: listeners the hub ends are counted by reason: a
// long-poll answered 408, and a long-poll, a hijacked EventSource stream and
// a WebSocket whose channel is closed; a listener that leaves by itself is
// not.
func TestStatsDisconnects(t *testing.T) {
	h, srv := newTestHub(t, Options{LongPollTimeout: 50 * time.Millisecond})
	mustOpen(t, h, ch)
	if a := get(http.DefaultClient, "GET", srv.URL+"/sub/"+ch, nil); a.code != http.StatusRequestTimeout {
		t.Fatalf("long-poll: %d, want 408", a.code)
	}
	if d := h.Stats().Disconnects; d != (DisconnectCounts{LongPollTimeout: 1}) {
		t.Errorf("after a 408: %+v", d)
	}

	h, srv = newTestHub(t, Options{})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/" + ch
	left := openStream(t, url, nil)
	left.resp.Body.Close() // leaves by itself
	waitListeners(t, h, ch, 0)
	polled := make(chan answer, 1)
	go func() { polled <- get(http.DefaultClient, "GET", url, nil) }()
	s := openStream(t, url, nil)
	ws := dialWS(t, wsURL(srv, ch), nil)
	waitListeners(t, h, ch, 3)
	if err := h.Close(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	if a := <-polled; a.code != http.StatusGone {
		t.Errorf("long-poll: %d, want 410", a.code)
	}
	if ev := s.next(t); ev.comment != ":410: 410 Gone" {
		t.Errorf("EventSource: %+v, want the 410 comment", ev)
	}
	checkGone(t, ws)
	eventually(t, "no listeners", func() bool { return h.Stats().Listeners == TransportCounts{} })
	want := DisconnectCounts{ChannelClosed: 3}
	if d := h.Stats().Disconnects; d != want {
		t.Errorf("Disconnects %+v, want %+v", d, want)
	}
	got := map[string]float64{}
	for _, st := range h.RelayStats() {
		if st.Name == "listeners_disconnected_total" {
			got[st.Labels[0][1]] = st.Value
		}
	}
	wantStats := map[string]float64{"slow": 0, "write_failed": 0, "channel_closed": 3, "longpoll_timeout": 0, "unsupported": 0}
	if fmt.Sprint(got) != fmt.Sprint(wantStats) {
		t.Errorf("RelayStats listeners_disconnected_total %v, want %v", got, wantStats)
	}
}
