package hub

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/relay"
)

// TestOneFraming checks that every transport, on every delivery path,
// sends for a message, after a gap or not, exactly what its encoding's
// encode returns: the bytes of an EventSource stream (hijacked, written by
// its own goroutine or by Publish's fast path, or on the ResponseWriter),
// a long-poll answer's headers and body, a WebSocket frame's type and
// payload. What a message and a gap look like on the wire is decided there
// alone, so that a change to it (the gap's spelling, say) reaches every
// path and this test still holds; other tests pin the spelling itself.
func TestOneFraming(t *testing.T) {
	// received is what a listener got for the message.
	type received struct {
		b      string
		binary bool
		header http.Header // long-poll's
	}
	// A receive connects a listener after from, gets the message, which
	// publish publishes if the listener must wait for it, and returns it;
	// want tells what to expect, once the message is published.
	type receive func(t *testing.T, addr, from string, publish func(), want func() delivery) received

	eventSource := func(parked bool) receive {
		return func(t *testing.T, addr, from string, publish func(), want func() delivery) received {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "GET /sub/%s HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\nLast-Event-ID: %s\r\n\r\n", ch, from)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, len(hello))
			if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != string(hello) {
				t.Fatalf("the stream starts with %q (%v)", b, err)
			}
			if parked {
				publish()
			}
			b = make([]byte, len(want().b))
			if _, err := io.ReadFull(resp.Body, b); err != nil {
				t.Fatal(err)
			}
			return received{b: string(b)}
		}
	}
	longPoll := func(t *testing.T, addr, from string, _ func(), _ func() delivery) received {
		a := get(http.DefaultClient, "GET", "http://"+addr+"/sub/"+ch, http.Header{"Last-Event-Id": {from}})
		if a.err != nil || a.code != http.StatusOK {
			t.Fatalf("got %d (%v), want 200", a.code, a.err)
		}
		return received{b: a.body, header: a.header}
	}
	webSocket := func(protos ...string) receive {
		return func(t *testing.T, addr, from string, _ func(), _ func() delivery) received {
			conn := dialWS(t, "ws://"+addr+"/sub/"+ch+"?last_event_id="+url.QueryEscape(from),
				&websocket.DialOptions{Subprotocols: protos})
			f := readFrame(t, conn)
			return received{b: f.data, binary: f.typ == websocket.MessageBinary}
		}
	}

	paths := []struct {
		name     string
		enc      encoding
		signals  bool // the encoding can tell a gap
		parked   bool // the listener is a parked hijacked stream when the message comes
		noHijack bool
		receive  receive
	}{
		{"eventsource", encEventSource, true, false, false, eventSource(false)},
		{"eventsource parked", encEventSource, true, true, false, eventSource(true)},
		{"eventsource not hijacked", encEventSource, true, false, true, eventSource(false)},
		{"longpoll", encLongPoll, true, false, false, longPoll},
		{"websocket", encWebSocket, false, false, false, webSocket()},
		{"websocket ws+meta.nchan", encWebSocketMeta, false, false, false, webSocket(metaProtocol)},
		{"websocket ws+meta.sessionpush", encWebSocketGap, true, false, false, webSocket(metaProtocol, gapProtocol)},
	}
	for _, p := range paths {
		for _, m := range framingMessages {
			for _, gap := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/gap=%v", p.name, m.ContentType, gap), func(t *testing.T) {
					opts := Options{BufferLength: 1, Heartbeat: -1}
					if p.parked {
						opts.BufferLength = -1 // the message comes with Publish alone
					}
					h, srv := newTestHub(t, opts)
					h.noHijack = p.noHijack
					mustOpen(t, h, ch)
					// The listener resumes after r0 or, to be told of a gap,
					// after an older message, which the hub dropped with r0.
					r0 := mustPublish(t, h, ch, text("before"))
					from := r0.ID
					if gap {
						from = "1:0"
					}
					var r1 relay.Receipt
					publish := func() {
						if p.parked {
							eventually(t, "a parked stream", func() bool { return parkedCount(h, ch) == 1 })
						}
						r1 = mustPublish(t, h, ch, m)
					}
					hdr := http.Header{}
					var want delivery
					wantFor := func() delivery {
						if want.b == nil {
							want = p.enc.encode(published(t, m, r1.ID), gap, mustParseID(t, from), hdr)
						}
						return want
					}
					if !p.parked {
						publish()
					}
					got := p.receive(t, srv.Listener.Addr().String(), from, publish, wantFor)

					wantFor()
					if got.b != string(want.b) || got.binary != want.binary {
						t.Errorf("received %q (binary %v), want %q (binary %v)", got.b, got.binary, want.b, want.binary)
					}
					if p.enc == encLongPoll {
						for _, k := range append(slices.Collect(maps.Keys(hdr)), gapHeader) {
							if g, w := got.header.Values(k), hdr.Values(k); !slices.Equal(g, w) {
								t.Errorf("header %s: %q, want %q", k, g, w)
							}
						}
					}
					if want.gap != (gap && p.signals) {
						t.Errorf("the delivery signals a gap: %v, want %v", want.gap, gap && p.signals)
					}
					eventually(t, "the delivery counted", func() bool { return h.Stats().Deliveries == 1 })
					if n := h.Stats().Gaps; n != map[bool]uint64{true: 1}[want.gap] {
						t.Errorf("%d gaps counted with a delivery that signals one: %v", n, want.gap)
					}
				})
			}
		}
	}
}

// framingMessages have what the encodings treat each their own way: an
// event name, a Content-Type, line breaks; a binary body.
var framingMessages = []relay.Message{
	{Event: "upd", ContentType: "text/plain", Body: []byte("two\nlines\r\n")},
	{ContentType: binaryType, Body: []byte{0, '\n', 0xff}},
}

// published rebuilds the message that Publish made of m with the ID id.
func published(t *testing.T, m relay.Message, id string) *message {
	t.Helper()
	pos := mustParseID(t, id)
	prev := relay.MessageID{Time: pos.Time, Tag: pos.Tag - 1}
	if pos.Tag == 0 {
		prev = relay.MessageID{Time: pos.Time - 1}
	}
	msg := newMessage(m)
	(&chanState{last: prev}).stamp(msg, time.Unix(pos.Time, 0))
	if msg.id != id {
		t.Fatalf("rebuilt %s, want %s", msg.id, id)
	}
	return msg
}

func mustParseID(t *testing.T, s string) relay.MessageID {
	t.Helper()
	id, err := relay.ParseMessageID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
