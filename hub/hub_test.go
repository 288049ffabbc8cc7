package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

const ch = "3f0e2a57-6c1d-4b8e-9a1f-2d7c5e8b9a10"

// newTestHub returns a hub and a server with its subscriber endpoint at
// /sub/{channel}; cleanup shuts the hub down before closing the server.
func newTestHub(t testing.TB, opts Options) (*Hub, *httptest.Server) {
	t.Helper()
	h := New(opts)
	mux := http.NewServeMux()
	mux.HandleFunc("/sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, r.PathValue("channel"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	return h, srv
}

func mustOpen(t testing.TB, h *Hub, channel string) string {
	t.Helper()
	cursor, err := h.Open(context.Background(), channel)
	if err != nil {
		t.Fatal(err)
	}
	return cursor
}

func mustPublish(t testing.TB, h *Hub, channel string, m relay.Message) relay.Receipt {
	t.Helper()
	r, err := h.Publish(context.Background(), channel, m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustInfo(t testing.TB, h *Hub, channel string) relay.Info {
	t.Helper()
	info, err := h.Info(context.Background(), channel)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func text(s string) relay.Message { return relay.Message{Body: []byte(s)} }

// eventually polls cond until it holds, failing the test after 10 seconds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitListeners waits until channel has n listeners.
func waitListeners(t testing.TB, h *Hub, channel string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d listeners", n), func() bool { return mustInfo(t, h, channel).Listeners == n })
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	h := New(Options{})
	if c := mustOpen(t, h, ch); c != relay.NoCursor {
		t.Errorf("cursor of a new channel = %q, want %q", c, relay.NoCursor)
	}
	if c := mustOpen(t, h, ch); c != relay.NoCursor {
		t.Errorf("second Open = %q, want %q", c, relay.NoCursor)
	}
	r := mustPublish(t, h, ch, text("a"))
	if c := mustOpen(t, h, ch); c != r.ID {
		t.Errorf("Open after a publish = %q, want the message id %q", c, r.ID)
	}
	if info := mustInfo(t, h, ch); info.Messages != 1 {
		t.Errorf("Open dropped the buffer: %+v", info)
	}
	if err := h.Close(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if c := mustOpen(t, h, ch); c != relay.NoCursor {
		t.Errorf("Open after Close = %q, want a fresh channel", c)
	}
}

// errAny stands for any error in tables.
var errAny = errors.New("any error")

func TestPublish(t *testing.T) {
	const limit = 16
	tests := []struct {
		name    string
		channel string
		msg     relay.Message
		want    error // nil: published
	}{
		{"small", ch, text("hi"), nil},
		{"empty body", ch, relay.Message{}, nil},
		{"exactly the limit", ch, text(strings.Repeat("x", limit)), nil},
		{"one byte over", ch, text(strings.Repeat("x", limit+1)), relay.ErrMessageTooLarge},
		{"never opened", "other", text("hi"), relay.ErrChannelNotFound},
		{"event with LF", ch, relay.Message{Event: "a\nb"}, errAny},
		{"event with CR", ch, relay.Message{Event: "a\rb"}, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := New(Options{MaxMessageSize: limit})
			mustOpen(t, h, ch)
			r, err := h.Publish(context.Background(), tt.channel, tt.msg)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if r.Queued != 1 || r.ID == "" {
					t.Errorf("receipt %+v, want one queued message with an id", r)
				}
				return
			}
			if err == nil {
				t.Fatalf("published %+v, want an error", r)
			}
			if tt.want != errAny && !errors.Is(err, tt.want) {
				t.Errorf("error %v, want %v", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "hub: ") || !strings.Contains(err.Error(), tt.channel) {
				t.Errorf("error %q does not start with hub: and name the channel", err)
			}
			if info := mustInfo(t, h, ch); info.Messages != 0 || info.LastMessageID != relay.NoCursor {
				t.Errorf("buffer changed: %+v", info)
			}
		})
	}
}

func TestInvalidIDs(t *testing.T) {
	ctx := context.Background()
	h := New(Options{})
	for _, id := range []string{"", "a/b", ".", "..", "a b", "ü", strings.Repeat("a", relay.MaxIDLength+1)} {
		t.Run(fmt.Sprintf("%.20q", id), func(t *testing.T) {
			_, err1 := h.Open(ctx, id)
			_, err2 := h.Publish(ctx, id, text("x"))
			_, err3 := h.Info(ctx, id)
			err4 := h.Close(ctx, id)
			for i, err := range []error{err1, err2, err3, err4} {
				if !errors.Is(err, relay.ErrInvalidID) || !strings.HasPrefix(err.Error(), "hub: ") {
					t.Errorf("method %d: error %v, want hub: …ErrInvalidID", i, err)
				}
			}
			rec := httptest.NewRecorder()
			h.ServeListener(rec, httptest.NewRequest("GET", "/", nil), id)
			if rec.Code != http.StatusBadRequest {
				t.Errorf("ServeListener: %d, want 400", rec.Code)
			}
		})
	}
}

func TestCanceledContext(t *testing.T) {
	h := New(Options{})
	mustOpen(t, h, ch)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Publish(ctx, ch, text("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish: %v, want context.Canceled", err)
	}
	if info := mustInfo(t, h, ch); info.Messages != 0 {
		t.Errorf("published with a canceled context: %+v", info)
	}
}

func TestInfo(t *testing.T) {
	ctx := context.Background()
	h, srv := newTestHub(t, Options{})
	if _, err := h.Info(ctx, ch); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Info before Open: %v, want ErrChannelNotFound", err)
	}
	mustOpen(t, h, ch)
	info := mustInfo(t, h, ch)
	if info.Messages != 0 || info.Listeners != 0 || info.LastMessageID != relay.NoCursor || info.SinceRequest >= 0 {
		t.Errorf("new channel: %+v", info)
	}
	mustPublish(t, h, ch, text("a"))
	r := mustPublish(t, h, ch, text("b"))

	// A listener waiting after the last message counts until it leaves.
	done := make(chan *http.Response)
	go func() {
		req, _ := http.NewRequest("GET", srv.URL+"/sub/"+ch, nil)
		req.Header.Set("Last-Event-ID", r.ID)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	waitListeners(t, h, ch, 1)
	info = mustInfo(t, h, ch)
	if info.Messages != 2 || info.LastMessageID != r.ID || info.SinceRequest < 0 {
		t.Errorf("with a listener: %+v", info)
	}
	if r := mustPublish(t, h, ch, text("c")); r.Listeners != 1 || r.Queued != 3 {
		t.Errorf("receipt %+v, want 1 subscriber, 3 queued", r)
	}
	if resp := <-done; resp != nil {
		resp.Body.Close()
	}
	waitListeners(t, h, ch, 0)

	if err := h.Close(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Info(ctx, ch); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Info after Close: %v, want ErrChannelNotFound", err)
	}
	if err := h.Close(ctx, ch); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("second Close: %v, want ErrChannelNotFound", err)
	}
	if _, err := h.Publish(ctx, ch, text("x")); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("Publish after Close: %v, want ErrChannelNotFound", err)
	}
}

func TestMessageIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{BufferLength: 100})
		mustOpen(t, h, ch)
		var ids []string
		for range 3 {
			ids = append(ids, mustPublish(t, h, ch, text("x")).ID)
		}
		time.Sleep(time.Second)
		ids = append(ids, mustPublish(t, h, ch, text("x")).ID)
		sec := time.Now().Unix() - 1
		want := []string{
			fmt.Sprintf("%d:0", sec), fmt.Sprintf("%d:1", sec), fmt.Sprintf("%d:2", sec),
			fmt.Sprintf("%d:0", sec+1),
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Errorf("ids %v, want %v", ids, want)
		}
	})

	t.Run("clock steps back", func(t *testing.T) {
		c := &chanState{wake: newWake()}
		now := time.Unix(2000, 0)
		var got []string
		for _, at := range []time.Time{now, now.Add(-time.Hour), now.Add(time.Second), now} {
			m := newMessage(text("x"))
			c.stamp(m, at)
			got = append(got, m.id+"/"+m.etag)
		}
		if want := "[2000:0/0 2000:1/1 2001:0/0 2001:1/1]"; fmt.Sprint(got) != want {
			t.Errorf("ids %v, want %v", got, want)
		}
	})
}

func TestFrame(t *testing.T) {
	tests := []struct {
		name string
		msg  relay.Message
		want string
	}{
		{"plain", text("hello"), "id: 7:0\ndata: hello\n\n"},
		{"named", relay.Message{Event: "upd", Body: []byte("x")}, "event: upd\nid: 7:0\ndata: x\n\n"},
		{"two lines", text("two\nlines"), "id: 7:0\ndata: two\ndata: lines\n\n"},
		{"empty", text(""), "id: 7:0\ndata: \n\n"},
		{"trailing newline", text("a\n"), "id: 7:0\ndata: a\ndata: \n\n"},
		{"CRLF and CR", text("a\r\nb\rc"), "id: 7:0\ndata: a\ndata: b\ndata: c\n\n"},
		{"CR cannot forge an event", text("x\r\rid: 9"), "id: 7:0\ndata: x\ndata: \ndata: id: 9\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMessage(tt.msg)
			(&chanState{}).stamp(m, time.Unix(7, 0))
			if string(m.frame) != tt.want {
				t.Errorf("frame %q, want %q", m.frame, tt.want)
			}
			if string(m.body) != string(tt.msg.Body) || m.length != fmt.Sprint(len(tt.msg.Body)) {
				t.Errorf("body %q (length %s), want %q", m.body, m.length, tt.msg.Body)
			}
			if m.modified != "Thu, 01 Jan 1970 00:00:07 GMT" {
				t.Errorf("Last-Modified %q", m.modified)
			}
		})
	}
}

func TestBuffer(t *testing.T) {
	t.Run("length", func(t *testing.T) {
		h := New(Options{BufferLength: 3})
		mustOpen(t, h, ch)
		var last relay.Receipt
		for i := range 5 {
			last = mustPublish(t, h, ch, text(fmt.Sprint(i)))
		}
		if last.Queued != 3 || mustInfo(t, h, ch).Messages != 3 {
			t.Errorf("queued %d, want 3", last.Queued)
		}
		if code, body := poll(t, h, http.Header{"Last-Event-Id": {relay.NoCursor}}); code != 200 || body != "2" {
			t.Errorf("oldest buffered: %d %q, want 200 \"2\"", code, body)
		}
	})
	t.Run("none kept", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := New(Options{BufferLength: -1})
			mustOpen(t, h, ch)
			if r := mustPublish(t, h, ch, text("lost")); r.Queued != 0 {
				t.Errorf("queued %d, want 0", r.Queued)
			}
			// A waiting listener still gets the next message.
			done := make(chan string)
			go func() {
				_, body := poll(t, h, nil)
				done <- body
			}()
			synctest.Wait()
			mustPublish(t, h, ch, text("live"))
			if body := <-done; body != "live" {
				t.Errorf("waiting listener got %q, want \"live\"", body)
			}
			if info := mustInfo(t, h, ch); info.Messages != 0 {
				t.Errorf("info %+v, want no message kept", info)
			}
		})
	})
	t.Run("ttl", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := New(Options{MessageTTL: time.Hour, LongPollTimeout: time.Minute})
			mustOpen(t, h, ch)
			mustPublish(t, h, ch, text("old"))
			time.Sleep(30 * time.Minute)
			mustPublish(t, h, ch, text("new"))
			time.Sleep(31 * time.Minute) // "old" has expired, "new" has not
			if code, body := poll(t, h, http.Header{"Last-Event-Id": {relay.NoCursor}}); code != 200 || body != "new" {
				t.Errorf("after the first expiry: %d %q, want 200 \"new\"", code, body)
			}
			if n := mustInfo(t, h, ch).Messages; n != 1 {
				t.Errorf("%d messages, want 1", n)
			}
			time.Sleep(30 * time.Minute)
			if code, _ := poll(t, h, nil); code != http.StatusRequestTimeout {
				t.Errorf("everything expired: %d, want 408", code)
			}
			if info := mustInfo(t, h, ch); info.Messages != 0 || info.LastMessageID == relay.NoCursor {
				t.Errorf("info %+v, want no message and the last id kept", info)
			}
		})
	})
}

// poll runs one long-poll for ch in process and returns its status and body.
func poll(t testing.TB, h *Hub, header http.Header) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", "/", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeListener(rec, req, ch)
	return rec.Code, rec.Body.String()
}

func TestPosition(t *testing.T) {
	const ims = "Thu, 01 Jan 2026 00:00:00 GMT" // 1767225600
	tests := []struct {
		name     string
		header   map[string]string
		query    string
		longPoll bool
		want     relay.MessageID
		reason   bool
	}{
		{name: "none", longPoll: true},
		{name: "Last-Event-ID", header: map[string]string{"Last-Event-ID": "5:2"}, want: relay.MessageID{Time: 5, Tag: 2}},
		{name: "query", query: "last_event_id=5%3A2", want: relay.MessageID{Time: 5, Tag: 2}},
		{name: "header before query", header: map[string]string{"Last-Event-ID": "5:2"}, query: "last_event_id=6:0", want: relay.MessageID{Time: 5, Tag: 2}},
		{name: "header before IMS", header: map[string]string{"Last-Event-ID": "5:2", "If-Modified-Since": ims, "If-None-Match": "1"}, longPoll: true, want: relay.MessageID{Time: 5, Tag: 2}},
		{name: "IMS and INM", header: map[string]string{"If-Modified-Since": ims, "If-None-Match": "3"}, longPoll: true, want: relay.MessageID{Time: 1767225600, Tag: 3}},
		{name: "IMS ignored by EventSource", header: map[string]string{"If-Modified-Since": ims}},
		{name: "INM alone", header: map[string]string{"If-None-Match": "3"}, longPoll: true},
		{name: "junk Last-Event-ID", header: map[string]string{"Last-Event-ID": "abc"}, reason: true},
		{name: "negative Last-Event-ID", header: map[string]string{"Last-Event-ID": "-1:0"}, reason: true},
		{name: "junk query", query: "last_event_id=1:x", reason: true},
		{name: "IMS alone", header: map[string]string{"If-Modified-Since": ims}, longPoll: true, reason: true},
		{name: "junk IMS", header: map[string]string{"If-Modified-Since": "yesterday", "If-None-Match": "1"}, longPoll: true, reason: true},
		{name: "IMS before 1970", header: map[string]string{"If-Modified-Since": "Mon, 01 Jan 1900 00:00:00 GMT", "If-None-Match": "1"}, longPoll: true, reason: true},
		{name: "junk INM", header: map[string]string{"If-Modified-Since": ims, "If-None-Match": "abc"}, longPoll: true, reason: true},
		{name: "quoted INM", header: map[string]string{"If-Modified-Since": ims, "If-None-Match": `"1"`}, longPoll: true, reason: true},
		{name: "multiplexed INM", header: map[string]string{"If-Modified-Since": ims, "If-None-Match": "1795742138:1,[0],-"}, longPoll: true, reason: true},
		{name: "INM of 19 digits", header: map[string]string{"If-Modified-Since": ims, "If-None-Match": "1000000000000000000"}, longPoll: true, reason: true},
		{name: "INM with a sign", header: map[string]string{"If-Modified-Since": ims, "If-None-Match": "+1"}, longPoll: true, reason: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{Header: http.Header{}, URL: &url.URL{RawQuery: tt.query}}
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			got, given, reason := position(r, tt.longPoll)
			if (reason != "") != tt.reason || got != tt.want || given != (!tt.reason && tt.want != relay.MessageID{}) {
				t.Errorf("position = %v, %v, %q; want %v, reason %v", got, given, reason, tt.want, tt.reason)
			}
		})
	}
}

// TestPositionAgreesWithParseMessageID holds every way a message ID enters
// a listener's request to the one rule of [relay.ParseMessageID]: a tag is
// taken from Last-Event-ID, last_event_id or If-None-Match exactly when
// ParseMessageID takes it.
func TestPositionAgreesWithParseMessageID(t *testing.T) {
	const ims = "Thu, 01 Jan 2026 00:00:00 GMT" // 1767225600
	tags := []string{"0", "7", "007", "999999999999999999", "1000000000000000000", "9223372036854775807",
		"-1", "+1", " 1", "1 ", "1.0", "0x1", "1:2", "１", "a"}
	for _, tag := range tags {
		want, wantErr := relay.ParseMessageID("1767225600:" + tag)
		entries := map[string]*http.Request{
			"Last-Event-ID": {Header: http.Header{"Last-Event-Id": {"1767225600:" + tag}}, URL: &url.URL{}},
			"last_event_id": {Header: http.Header{}, URL: &url.URL{RawQuery: "last_event_id=" + url.QueryEscape("1767225600:"+tag)}},
			"If-None-Match": {Header: http.Header{"If-Modified-Since": {ims}, "If-None-Match": {tag}}, URL: &url.URL{}},
		}
		for name, r := range entries {
			got, given, reason := position(r, true)
			if given != (wantErr == nil) || (reason != "") != (wantErr != nil) || (wantErr == nil && got != want) {
				t.Errorf("tag %q through %s: position %v, reason %q; ParseMessageID: %v, %v", tag, name, got, reason, want, wantErr)
			}
		}
	}
}

func FuzzPosition(f *testing.F) {
	f.Add("", "", "", "", true)
	f.Add("1795742138:1", "", "", "", false)
	f.Add("", "1795742138:1", "", "", false)
	f.Add("", "", "Thu, 01 Jan 2026 00:00:00 GMT", "0", true)
	f.Add("", "", "Thu, 01 Jan 2026 00:00:00 GMT", "", true)
	f.Add("", "", "Sun, 01 Jan 2037 00:00:00 GMT", "1795742138:1,[0],-", true)
	f.Add("99999999999999999999:0", "a:b", "Monday, 02-Jan-06 15:04:05 MST", "-1", true)
	f.Fuzz(func(t *testing.T, lastEventID, query, ims, inm string, longPoll bool) {
		r := &http.Request{
			Header: http.Header{"Last-Event-Id": {lastEventID}, "If-Modified-Since": {ims}, "If-None-Match": {inm}},
			URL:    &url.URL{RawQuery: "last_event_id=" + url.QueryEscape(query)},
		}
		pos, given, reason := position(r, longPoll)
		if reason != "" {
			if pos != (relay.MessageID{}) || given {
				t.Errorf("position %v (given %v) with reason %q", pos, given, reason)
			}
			return
		}
		if !given && pos != (relay.MessageID{}) {
			t.Errorf("position %v not given", pos)
		}
		if pos.Time < 0 || pos.Tag < 0 {
			t.Errorf("negative position %v", pos)
		}
		if back, err := relay.ParseMessageID(pos.String()); err != nil || back != pos {
			t.Errorf("position %v does not round-trip: %v", pos, err)
		}
	})
}

func TestServerWriteTimeout(t *testing.T) {
	const writeTimeout = 200 * time.Millisecond
	h := New(Options{Heartbeat: -1})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, ch)
	}))
	srv.Config.WriteTimeout = writeTimeout
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	mustOpen(t, h, ch)

	// Let the server's write deadline pass: the condition under test, not
	// a synchronisation.
	outlive := func() { time.Sleep(2 * writeTimeout) }

	t.Run("long-poll", func(t *testing.T) {
		type result struct {
			code int
			body string
			err  error
		}
		done := make(chan result)
		go func() {
			resp, err := srv.Client().Get(srv.URL)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			done <- result{resp.StatusCode, string(b), err}
		}()
		waitListeners(t, h, ch, 1)
		outlive()
		mustPublish(t, h, ch, text("late"))
		if r := <-done; r.err != nil || r.code != 200 || r.body != "late" {
			t.Errorf("got %d %q %v, want 200 \"late\"", r.code, r.body, r.err)
		}
		waitListeners(t, h, ch, 0)
	})

	t.Run("eventsource", func(t *testing.T) {
		cursor := mustOpen(t, h, ch)
		s := openStream(t, srv.URL+"?last_event_id="+cursor, nil)
		outlive()
		r := mustPublish(t, h, ch, text("late"))
		if ev := s.next(t); ev.id != r.ID || ev.data != "late" {
			t.Errorf("event %+v, want id %s", ev, r.ID)
		}
		outlive()
		r = mustPublish(t, h, ch, text("later"))
		if ev := s.next(t); ev.id != r.ID || ev.data != "later" {
			t.Errorf("event %+v, want id %s", ev, r.ID)
		}
	})
}

func TestShutdown(t *testing.T) {
	const perTransport = 100
	before := runtime.NumGoroutine()
	h := New(Options{MaxListeners: -1})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, ch)
	}))
	tr := &http.Transport{}
	client := &http.Client{Transport: tr}
	mustOpen(t, h, ch)

	var wg sync.WaitGroup
	var ended atomic.Int64
	for range perTransport {
		wg.Go(func() {
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusGone {
				t.Errorf("long-poll: %d, want 410", resp.StatusCode)
				return
			}
			ended.Add(1)
		})
		wg.Go(func() {
			req, _ := http.NewRequest("GET", srv.URL, nil)
			req.Header.Set("Accept", "text/event-stream")
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.HasSuffix(b, gone) {
				t.Errorf("stream ended with %q (%v), want %q", b[max(0, len(b)-20):], err, gone)
				return
			}
			ended.Add(1)
		})
	}
	waitListeners(t, h, ch, 2*perTransport)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	if n := ended.Load(); n != 2*perTransport {
		t.Errorf("%d listeners ended cleanly, want %d", n, 2*perTransport)
	}

	rec := httptest.NewRecorder()
	h.ServeListener(rec, httptest.NewRequest("GET", "/", nil), ch)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("ServeListener after Shutdown: %d, want 503", rec.Code)
	}
	_, err1 := h.Open(ctx, ch)
	_, err2 := h.Publish(ctx, ch, text("x"))
	_, err3 := h.Info(ctx, ch)
	err4 := h.Close(ctx, ch)
	for i, err := range []error{err1, err2, err3, err4} {
		if !errors.Is(err, relay.ErrClosed) {
			t.Errorf("method %d after Shutdown: %v, want ErrClosed", i, err)
		}
	}
	if err := h.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}

	srv.Close()
	tr.CloseIdleConnections()
	eventually(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

func TestShutdownContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{})
		mustOpen(t, h, ch)
		// A listener that cannot take its 410 holds Shutdown until ctx ends.
		w := &blockingWriter{header: http.Header{}, release: make(chan struct{})}
		go h.ServeListener(w, httptest.NewRequest("GET", "/", nil), ch)
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown: %v, want DeadlineExceeded", err)
		}
		close(w.release)
		if err := h.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown after release: %v", err)
		}
	})
}

// blockingWriter holds WriteHeader until release is closed.
type blockingWriter struct {
	header  http.Header
	release chan struct{}
}

func (w *blockingWriter) Header() http.Header         { return w.header }
func (w *blockingWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *blockingWriter) WriteHeader(int)             { <-w.release }

func BenchmarkPublish(b *testing.B) {
	for _, size := range []int{64, 4 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			h := New(Options{})
			mustOpen(b, h, ch)
			m := relay.Message{Body: bytes.Repeat([]byte("x"), size), ContentType: "application/json"}
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := h.Publish(ctx, ch, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFanOut publishes one message at a time to n in-process
// EventSource listeners and waits until every one has flushed it.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			h := New(Options{MaxListeners: -1, Heartbeat: -1})
			mustOpen(b, h, ch)
			f := &fanout{done: make(chan struct{}, 1)}
			f.want.Store(int64(n)) // the ": hi" flushes
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range n {
				req := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
				req.Header.Set("Accept", "text/event-stream")
				wg.Go(func() { h.ServeListener(&fanoutWriter{f: f, header: http.Header{}}, req, ch) })
			}
			<-f.done
			m := text(`{"hello":"world"}`)
			b.ReportAllocs()
			for b.Loop() {
				f.want.Add(int64(n))
				if _, err := h.Publish(ctx, ch, m); err != nil {
					b.Fatal(err)
				}
				<-f.done
			}
			b.StopTimer()
			cancel()
			wg.Wait()
		})
	}
}

type fanout struct {
	flushes, want atomic.Int64
	done          chan struct{}
}

// fanoutWriter is a ResponseWriter that counts flushes across listeners.
type fanoutWriter struct {
	f      *fanout
	header http.Header
}

func (w *fanoutWriter) Header() http.Header              { return w.header }
func (w *fanoutWriter) Write(b []byte) (int, error)      { return len(b), nil }
func (w *fanoutWriter) WriteHeader(int)                  {}
func (w *fanoutWriter) SetWriteDeadline(time.Time) error { return nil }
func (w *fanoutWriter) Flush() {
	if w.f.flushes.Add(1) == w.f.want.Load() {
		w.f.done <- struct{}{}
	}
}
