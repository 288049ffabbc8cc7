package hub

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// event is one block of an EventSource stream: an event, or a comment line.
type event struct {
	comment        string // the whole comment line, ":" included
	name, id, data string
}

// stream reads an EventSource response.
type stream struct {
	resp *http.Response
	r    *bufio.Reader
}

// openStream connects to url as EventSource, checks the answer and its
// dialEventSource opens a raw TCP connection to addr and sends an
// EventSource request for ch on it; the test reads the answer itself. The
// connection is closed at the end of the test.
func dialEventSource(t testing.TB, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /sub/%s HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\n\r\n", ch)
	return conn
}

// ": hi" comment, and closes the stream at cleanup.
func openStream(t testing.TB, url string, header http.Header) *stream {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("got %d %q, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &stream{resp: resp, r: bufio.NewReader(resp.Body)}
	if ev := s.next(t); ev.comment != ": hi" {
		t.Fatalf("stream starts with %+v, want \": hi\"", ev)
	}
	return s
}

func (s *stream) next(t testing.TB) event {
	t.Helper()
	ev, err := s.read()
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// read parses one block: lines up to a blank line; data lines are joined
// with LF as browsers do. Only LF ends a line, so a CR the server failed to
// split shows up in the data.
func (s *stream) read() (event, error) {
	var ev event
	var data []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if data != nil {
				ev.data = strings.Join(data, "\n")
			}
			return ev, nil
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			ev.comment = line
		case "event":
			ev.name = value
		case "id":
			ev.id = value
		case "data":
			data = append(data, value)
		default:
			return ev, fmt.Errorf("unexpected line %q", line)
		}
	}
}

func TestEventSource(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	url := srv.URL + "/sub/" + ch
	mustOpen(t, h, ch)
	msgs := []relay.Message{
		{Body: []byte("plain"), ContentType: "text/plain"},
		{Body: []byte("two\nlines"), Event: "upd"},
		{},
		{Body: []byte("a\r\nb\rc\n")},
		{Body: []byte("x\r\rid: 9\n\nevent: forged")},
	}
	want := []event{
		{data: "plain"},
		{name: "upd", data: "two\nlines"},
		{data: ""},
		{data: "a\nb\nc\n"},
		{data: "x\n\nid: 9\n\nevent: forged"},
	}
	// The first half is buffered before the listener connects, the rest
	// is published while it listens.
	var ids []string
	for _, m := range msgs[:2] {
		ids = append(ids, mustPublish(t, h, ch, m).ID)
	}
	s := openStream(t, url, http.Header{"Last-Event-Id": {relay.NoCursor}})
	checkCommonHeaders(t, s.resp.Header, false)
	for _, m := range msgs[2:] {
		ids = append(ids, mustPublish(t, h, ch, m).ID)
	}
	for i, w := range want {
		w.id = ids[i]
		if ev := s.next(t); ev != w {
			t.Errorf("event %d = %+v, want %+v", i, ev, w)
		}
	}
}

func TestEventSourceResume(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	url := srv.URL + "/sub/" + ch
	mustOpen(t, h, ch)
	first := mustPublish(t, h, ch, text("first"))
	cursor := mustOpen(t, h, ch)
	second := mustPublish(t, h, ch, text("second"))
	tests := []struct {
		name   string
		url    string
		header http.Header
	}{
		{"Last-Event-ID", url, http.Header{"Last-Event-Id": {first.ID}}},
		{"query", url + "?last_event_id=" + first.ID, nil},
		{"cursor from Open", url + "?last_event_id=" + cursor, nil},
		{"Last-Event-ID before query", url + "?last_event_id=" + second.ID, http.Header{"Last-Event-Id": {first.ID}}},
		{"If-Modified-Since ignored", url + "?last_event_id=" + first.ID, http.Header{"If-Modified-Since": {"junk"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStream(t, tt.url, tt.header)
			if ev := s.next(t); ev.id != second.ID || ev.data != "second" {
				t.Errorf("first event %+v, want %s", ev, second.ID)
			}
			s.resp.Body.Close()
			waitListeners(t, h, ch, 0)
		})
	}
}

func TestEventSourceClose(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: -1})
	mustOpen(t, h, ch)
	s := openStream(t, srv.URL+"/sub/"+ch, nil)
	waitListeners(t, h, ch, 1)
	if err := h.Close(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	if ev := s.next(t); ev.comment != ":410: 410 Gone" {
		t.Errorf("got %+v, want the :410: comment", ev)
	}
	if rest, err := io.ReadAll(s.r); err != nil || len(rest) != 0 {
		t.Errorf("after :410: %q (%v), want the end of the stream", rest, err)
	}
}

func TestEventSourceHeartbeat(t *testing.T) {
	h, srv := newTestHub(t, Options{Heartbeat: 5 * time.Millisecond})
	mustOpen(t, h, ch)
	s := openStream(t, srv.URL+"/sub/"+ch, nil)
	for range 2 {
		if ev := s.next(t); ev.comment != ": " {
			t.Fatalf("got %+v, want a heartbeat comment", ev)
		}
	}
	r := mustPublish(t, h, ch, text("x"))
	for {
		ev := s.next(t)
		if ev.comment == ": " {
			continue
		}
		if ev.id != r.ID {
			t.Errorf("got %+v, want %s", ev, r.ID)
		}
		break
	}
}

// TestStalledListener connects an EventSource listener that never reads,
// next to one that does, and publishes far more than socket buffers hold.
func TestStalledListener(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 128<<10)
	run := func(t *testing.T, h *Hub, url string, until func(i int) bool) (stalled net.Conn) {
		t.Helper()
		mustOpen(t, h, ch)
		stalled = dialEventSource(t, strings.TrimPrefix(url, "http://"))
		stalled.(*net.TCPConn).SetReadBuffer(4096)
		waitListeners(t, h, ch, 1)
		s := openStream(t, url+"/sub/"+ch, nil)
		for i := 0; !until(i); i++ {
			r := mustPublish(t, h, ch, relay.Message{Body: body})
			if ev := s.next(t); ev.id != r.ID || len(ev.data) != len(body) {
				t.Fatalf("message %d: got id %s (%d bytes), want %s", i, ev.id, len(ev.data), r.ID)
			}
		}
		return stalled
	}

	t.Run("publish does not wait", func(t *testing.T) {
		h, srv := newTestHub(t, Options{Heartbeat: -1, WriteTimeout: -1})
		stalled := run(t, h, srv.URL, func(i int) bool { return i == 256 }) // 32 MiB
		if n := mustInfo(t, h, ch).Listeners; n != 2 {
			t.Errorf("%d listeners, want the stalled one still there", n)
		}
		stalled.Close()
		waitListeners(t, h, ch, 1)
	})

	t.Run("disconnected after WriteTimeout", func(t *testing.T) {
		// The reading listener must keep up within WriteTimeout, on a loaded machine.
		h, srv := newTestHub(t, Options{Heartbeat: -1, WriteTimeout: 500 * time.Millisecond})
		run(t, h, srv.URL, func(i int) bool {
			if i > 10000 {
				t.Fatal("the stalled listener was never disconnected")
			}
			return mustInfo(t, h, ch).Listeners == 1
		})
	})
}
