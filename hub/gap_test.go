package hub

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
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
		for _, from := range []string{relay.NoCursor, ids[2]} { // the empty channel's cursor, and just before the buffer
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
		for _, from := range []string{relay.NoCursor, ids[2], ids[3]} {
			a := get(http.DefaultClient, "GET", url, http.Header{"Last-Event-Id": {from}})
			if a.code != 200 || a.header.Values("X-Gap") != nil {
				t.Errorf("from %q: got %d %q X-Gap %q, want no gap", from, a.code, a.body, a.header.Get("X-Gap"))
			}
		}
	})

	t.Run("websocket", func(t *testing.T) {
		before := h.Stats().Gaps
		// The kit's client offers both meta subprotocols, Nchan's first.
		conn := dialWS(t, wsURL(srv, ch)+"?last_event_id="+ids[1], &websocket.DialOptions{Subprotocols: []string{metaProtocol, gapProtocol}})
		if got := conn.Subprotocol(); got != gapProtocol {
			t.Fatalf("subprotocol %q, want %s", got, gapProtocol)
		}
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

	// Nchan's own client (NchanSubscriber) parses each ws+meta.nchan frame
	// with this pattern and loses the message when it does not match.
	nchanFrame := regexp.MustCompile(`^id: (.*)\n(content-type: (.*)\n)?\n`)
	t.Run("websocket ws+meta.nchan keeps Nchan's shape", func(t *testing.T) {
		before := h.Stats().Gaps
		for _, m := range []relay.Message{text("typed"), {Body: []byte("typed"), ContentType: "text/plain"}} {
			mustPublish(t, h, ch, m)
		}
		info := mustInfo(t, h, ch) // the buffer (two messages) holds the two above: a gap after ids[1]
		conn := dialWS(t, wsURL(srv, ch)+"?last_event_id="+ids[1], &websocket.DialOptions{Subprotocols: []string{metaProtocol}})
		for range info.Messages {
			f := readFrame(t, conn)
			m := nchanFrame.FindStringSubmatch(f.data)
			if m == nil || f.data[len(m[0]):] != "typed" || strings.Contains(f.data, "gap:") {
				t.Errorf("frame %q does not match Nchan's shape %s with the body after it", f.data, nchanFrame)
			}
		}
		if n := h.Stats().Gaps - before; n != 0 {
			t.Errorf("%d gaps counted for a ws+meta.nchan listener, want 0 (none signalled)", n)
		}
	})
}

// pollGap runs one long-poll for ch in process after the position from,
// and returns its body and X-Gap header.
func pollGap(t *testing.T, h *Hub, from string) (body, gap string) {
	t.Helper()
	req := httptest.NewRequest("GET", "/", nil)
	if from != "" {
		req.Header.Set("Last-Event-ID", from)
	}
	rec := httptest.NewRecorder()
	h.ServeListener(rec, req, ch)
	if rec.Code != 200 {
		t.Errorf("poll from %q: %d", from, rec.Code)
	}
	return rec.Body.String(), rec.Header().Get("X-Gap")
}

// TestGapNotBuffered keeps no message: a listener waiting at its position
// gets the next message without a gap, one whose next message was
// published while it was not waiting gets the gap.
func TestGapNotBuffered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{BufferLength: -1})
		defer h.Shutdown(context.Background())
		mustOpen(t, h, ch)
		waiting := func(from string) <-chan [2]string {
			done := make(chan [2]string, 1)
			go func() {
				body, gap := pollGap(t, h, from)
				done <- [2]string{body, gap}
			}()
			synctest.Wait()
			return done
		}
		r0 := mustPublish(t, h, ch, text("lost"))
		done := waiting("")
		r1 := mustPublish(t, h, ch, text("one"))
		if got := <-done; got != [2]string{"one", ""} {
			t.Errorf("fresh listener: %q, want one without a gap", got)
		}
		done = waiting(r1.ID)
		mustPublish(t, h, ch, text("two"))
		if got := <-done; got != [2]string{"two", ""} {
			t.Errorf("listener at one: %q, want two without a gap", got)
		}
		done = waiting(r0.ID)
		mustPublish(t, h, ch, text("three"))
		if got := <-done; got != [2]string{"three", r0.ID} {
			t.Errorf("listener at lost: %q, want three after a gap at %s", got, r0.ID)
		}
	})
}

// TestGapExpired expires buffered messages: a listener that had not got
// them gets a gap.
func TestGapExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{MessageTTL: time.Hour})
		defer h.Shutdown(context.Background())
		mustOpen(t, h, ch)
		a := mustPublish(t, h, ch, text("a"))
		b := mustPublish(t, h, ch, text("b"))
		time.Sleep(61 * time.Minute)
		// Expired, not yet dropped: the next message comes with a gap.
		done := make(chan string, 1)
		go func() {
			_, gap := pollGap(t, h, a.ID)
			done <- gap
		}()
		synctest.Wait()
		mustPublish(t, h, ch, text("c"))
		if gap := <-done; gap != a.ID {
			t.Errorf("X-Gap %q, want %s", gap, a.ID)
		}
		if body, gap := pollGap(t, h, a.ID); body != "c" || gap != a.ID {
			t.Errorf("from a after the drop: %q X-Gap %q, want c after a gap at %s", body, gap, a.ID)
		}
		if body, gap := pollGap(t, h, b.ID); body != "c" || gap != "" {
			t.Errorf("from b: %q X-Gap %q, want c without a gap", body, gap)
		}
	})
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
		conn := dialEventSource(t, srv.Listener.Addr().String())
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
		// m4 is counted once written, maybe after the client has it.
		eventually(t, "4 deliveries", func() bool { return h.Stats().Deliveries == 4 })
		if s := h.Stats(); s.Gaps != 1 {
			t.Errorf("%d gaps, want 1", s.Gaps)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		h, srv := newTestHub(t, opts)
		mustOpen(t, h, ch)
		conn := dialWS(t, wsURL(srv, ch), &websocket.DialOptions{Subprotocols: []string{gapProtocol}})
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
	got := string(appendMetaFrame(nil, m, &pos))
	want := "id: 100:0\ncontent-type: text/plain\ngap: 99:3\n\na\n\nb"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
