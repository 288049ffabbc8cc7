package hub

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/relay"
)

// publishN publishes n text messages "m0", "m1"… and returns their IDs.
func publishN(t *testing.T, h *Hub, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = mustPublish(t, h, ch, text(fmt.Sprintf("m%d", i))).ID
	}
	return ids
}

func TestPublishReservedEvent(t *testing.T) {
	h := New(Options{})
	defer h.Shutdown(context.Background())
	mustOpen(t, h, ch)
	_, err := h.Publish(context.Background(), ch, relay.Message{Event: "gap", Body: []byte("x")})
	if !errors.Is(err, ErrReservedEvent) || !strings.Contains(err.Error(), `"gap"`) {
		t.Errorf("Publish with event gap: %v, want ErrReservedEvent naming it", err)
	}
	if info := mustInfo(t, h, ch); info.Messages != 0 {
		t.Errorf("%d messages buffered, want none", info.Messages)
	}
	mustPublish(t, h, ch, relay.Message{Event: "gaps", Body: []byte("x")}) // only the exact name
}

// TestGapResume resumes listeners of each transport after a position whose
// next messages the buffer (two messages) dropped, at it, and from nothing.
func TestGapResume(t *testing.T) {
	h, srv := newTestHub(t, Options{BufferLength: 2})
	mustOpen(t, h, ch)
	ids := publishN(t, h, 5) // m3 and m4 stay
	url := srv.URL + "/sub/" + ch

	t.Run("eventsource", func(t *testing.T) {
		before := h.Stats().Gaps
		s := openStream(t, url, http.Header{"Last-Event-Id": {ids[1]}})
		if ev := s.next(t); ev.name != "gap" || ev.data != ids[1] || ev.id != "" {
			t.Errorf("got %+v, want a gap event with data %s and no id", ev, ids[1])
		}
		for _, i := range []int{3, 4} {
			if ev := s.next(t); ev.id != ids[i] || ev.name != "" {
				t.Errorf("got %+v, want %s", ev, ids[i])
			}
		}
		if n := h.Stats().Gaps - before; n != 1 {
			t.Errorf("%d gaps counted, want 1", n)
		}
		for _, from := range []string{"", ids[2]} { // fresh, and just before the buffer
			s := openStream(t, url, http.Header{"Last-Event-Id": {from}})
			if ev := s.next(t); ev.id != ids[3] {
				t.Errorf("from %q: got %+v, want %s", from, ev, ids[3])
			}
		}
	})

	t.Run("longpoll", func(t *testing.T) {
		a := get(http.DefaultClient, "GET", url, http.Header{"Last-Event-Id": {ids[0]}})
		if a.code != 200 || a.body != "m3" || a.header.Get("X-Gap") != ids[0] {
			t.Errorf("got %d %q X-Gap %q, want m3 with X-Gap %s", a.code, a.body, a.header.Get("X-Gap"), ids[0])
		}
		for _, from := range []string{"", ids[2], ids[3]} {
			a := get(http.DefaultClient, "GET", url, http.Header{"Last-Event-Id": {from}})
			if a.code != 200 || a.header.Values("X-Gap") != nil {
				t.Errorf("from %q: got %d %q X-Gap %q, want no gap", from, a.code, a.body, a.header.Get("X-Gap"))
			}
		}
	})

	t.Run("websocket", func(t *testing.T) {
		before := h.Stats().Gaps
		conn := dialWS(t, wsURL(srv, ch)+"?last_event_id="+ids[1], &websocket.DialOptions{Subprotocols: []string{metaProtocol}})
		want := "id: " + ids[3] + "\ngap: " + ids[1] + "\n\nm3"
		if f := readFrame(t, conn); f.data != want {
			t.Errorf("got %q, want %q", f.data, want)
		}
		if f := readFrame(t, conn); f.data != "id: "+ids[4]+"\n\nm4" {
			t.Errorf("got %q, want m4 without a gap", f.data)
		}
		plain := dialWS(t, wsURL(srv, ch)+"?last_event_id="+ids[1], nil)
		if f := readFrame(t, plain); f.data != "m3" {
			t.Errorf("plain WebSocket: got %q, want the body alone", f.data)
		}
		readFrame(t, plain)
		if n := h.Stats().Gaps - before; n != 1 {
			t.Errorf("%d gaps counted, want 1 (none for the plain WebSocket)", n)
		}
	})
}

// TestGapNotBuffered keeps no message: a listener gets the ones published
// while it waits, with no gap, and a gap for those published while it was
// busy.
func TestGapNotBuffered(t *testing.T) {
	h, srv := newTestHub(t, Options{BufferLength: -1})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/" + ch
	s := openStream(t, url, nil)
	r0 := mustPublish(t, h, ch, text("a"))
	if ev := s.next(t); ev.id != r0.ID {
		t.Fatalf("got %+v, want %s", ev, r0.ID)
	}
	r1 := mustPublish(t, h, ch, text("b"))
	if ev := s.next(t); ev.id != r1.ID || ev.name != "" {
		t.Fatalf("got %+v, want %s without a gap", ev, r1.ID)
	}
	// A long-poll from r0 missed r1: the next message comes with the gap.
	done := make(chan answer, 1)
	go func() { done <- get(http.DefaultClient, "GET", url, http.Header{"Last-Event-Id": {r0.ID}}) }()
	waitListeners(t, h, ch, 2)
	r2 := mustPublish(t, h, ch, text("c"))
	a := <-done
	if a.code != 200 || a.body != "c" || a.header.Get("X-Gap") != r0.ID {
		t.Errorf("got %d %q X-Gap %q, want c after a gap at %s", a.code, a.body, a.header.Get("X-Gap"), r0.ID)
	}
	if ev := s.next(t); ev.id != r2.ID || ev.name != "" {
		t.Errorf("got %+v, want %s without a gap", ev, r2.ID)
	}
}

// TestGapMidStream makes a listener fall behind while it writes a large
// message: the messages published meanwhile overflow the buffer, and it
// gets a gap before the ones still buffered.
func TestGapMidStream(t *testing.T) {
	// More than socket buffers hold (4 MiB to send, about 128 KiB to
	// receive while the client does not read).
	big := bytes.Repeat([]byte("x"), 16<<20)
	opts := Options{BufferLength: 2, MaxMessageSize: -1, Heartbeat: -1}

	t.Run("eventsource", func(t *testing.T) {
		h, srv := newTestHub(t, opts)
		mustOpen(t, h, ch)
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /sub/%s HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\n\r\n", ch)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		s := &stream{resp: resp, r: bufio.NewReaderSize(resp.Body, 4096)}
		s.next(t) // ": hi"
		r0 := mustPublish(t, h, ch, text("first"))
		if ev := s.next(t); ev.id != r0.ID {
			t.Fatalf("got %+v, want %s", ev, r0.ID)
		}
		r1 := mustPublish(t, h, ch, relay.Message{Body: big})
		head := make([]byte, 1024)
		if _, err := io.ReadFull(s.r, head); err != nil || !bytes.HasPrefix(head, []byte("id: "+r1.ID+"\ndata: xxx")) {
			t.Fatalf("start of the large event: %q (%v)", head[:40], err)
		}
		// The listener is now writing r1, and cannot finish before we read.
		ids := publishN(t, h, 5)
		rest, err := s.r.ReadString('\n')
		if err != nil || len(head)+len(rest) != len("id: "+r1.ID+"\ndata: \n")+len(big) {
			t.Fatalf("rest of the large event: %d bytes (%v)", len(rest), err)
		}
		s.next(t) // the blank line that ends it
		if ev := s.next(t); ev.name != "gap" || ev.data != r1.ID || ev.id != "" {
			t.Errorf("got %+v, want a gap after %s", ev, r1.ID)
		}
		for _, i := range []int{3, 4} {
			if ev := s.next(t); ev.id != ids[i] {
				t.Errorf("got %+v, want %s", ev, ids[i])
			}
		}
		if s := h.Stats(); s.Gaps != 1 || s.Deliveries != 4 {
			t.Errorf("%d gaps, %d deliveries; want 1 and 4", s.Gaps, s.Deliveries)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		h, srv := newTestHub(t, opts)
		mustOpen(t, h, ch)
		conn := dialWS(t, wsURL(srv, ch), &websocket.DialOptions{Subprotocols: []string{metaProtocol}})
		r0 := mustPublish(t, h, ch, text("first"))
		if f := readFrame(t, conn); !strings.HasPrefix(f.data, "id: "+r0.ID+"\n") {
			t.Fatalf("got %q, want %s", f.data, r0.ID)
		}
		r1 := mustPublish(t, h, ch, relay.Message{Body: big})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, rd, err := conn.Reader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 1024)
		if _, err := io.ReadFull(rd, head); err != nil || !bytes.HasPrefix(head, []byte("id: "+r1.ID+"\n")) {
			t.Fatalf("start of the large frame: %q (%v)", head[:40], err)
		}
		ids := publishN(t, h, 5)
		if n, err := io.Copy(io.Discard, rd); err != nil || int(n)+len(head) != len("id: "+r1.ID+"\n\n")+len(big) {
			t.Fatalf("rest of the large frame: %d bytes (%v)", n, err)
		}
		want := "id: " + ids[3] + "\ngap: " + r1.ID + "\n\nm3"
		if f := readFrame(t, conn); f.data != want {
			t.Errorf("got %q, want %q", f.data, want)
		}
		if f := readFrame(t, conn); f.data != "id: "+ids[4]+"\n\nm4" {
			t.Errorf("got %q, want m4", f.data)
		}
	})
}

func TestGapMetaFrame(t *testing.T) {
	m := newMessage(relay.Message{Body: []byte("a\n\nb"), ContentType: "text/plain"})
	var c chanState
	c.stamp(m, time.Unix(100, 0))
	pos := relay.MessageID{Time: 99, Tag: 3}
	got := string(gapMetaFrame(m.metaFrame(), pos))
	want := "id: 100:0\ncontent-type: text/plain\ngap: 99:3\n\na\n\nb"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
