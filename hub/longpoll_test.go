package hub

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

type answer struct {
	code   int
	header http.Header
	body   string
	err    error
}

// get sends one request and reads the whole answer; safe in any goroutine.
func get(client *http.Client, method, url string, header http.Header) answer {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return answer{err: err}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b), err}
}

// checkMessage checks a long-poll answer against the message it should carry.
func checkMessage(t *testing.T, a answer, body, contentType string, r relay.Receipt) {
	t.Helper()
	if a.err != nil || a.code != http.StatusOK || a.body != body {
		t.Fatalf("got %d %q (%v), want 200 %q", a.code, a.body, a.err, body)
	}
	id, err := relay.ParseMessageID(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	lm, err := http.ParseTime(a.header.Get("Last-Modified"))
	if err != nil || lm.Unix() != id.Time || a.header.Get("Etag") != strconv.FormatInt(id.Tag, 10) {
		t.Errorf("Last-Modified %q, Etag %q; want the id %s", a.header.Get("Last-Modified"), a.header.Get("Etag"), r.ID)
	}
	if got := strings.Join(a.header.Values("Content-Type"), ","); got != contentType {
		t.Errorf("Content-Type %q, want %q", got, contentType)
	}
	if got := a.header.Get("Content-Length"); got != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %q for %d bytes", got, len(body))
	}
	checkCommonHeaders(t, a.header, true)
}

func checkCommonHeaders(t *testing.T, h http.Header, longPoll bool) {
	t.Helper()
	if h.Get("Cache-Control") != "no-store" || h.Get("X-Accel-Buffering") != "no" {
		t.Errorf("Cache-Control %q, X-Accel-Buffering %q", h.Get("Cache-Control"), h.Get("X-Accel-Buffering"))
	}
	if vary := h.Get("Vary"); longPoll != (vary == "If-None-Match, If-Modified-Since") {
		t.Errorf("Vary %q on long-poll=%v", vary, longPoll)
	}
}

func TestLongPollWalk(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	url := srv.URL + "/sub/" + ch
	mustOpen(t, h, ch)
	msgs := []relay.Message{
		{Body: []byte("one"), ContentType: "text/plain"},
		{Body: []byte("two")},
		{Body: []byte(`{"n":3}`), ContentType: "application/json"},
	}
	var receipts []relay.Receipt
	for _, m := range msgs {
		receipts = append(receipts, mustPublish(t, h, ch, m))
	}

	header := http.Header{"Last-Event-Id": {relay.NoCursor}} // the cursor of the empty channel
	for i, m := range msgs {
		a := get(srv.Client(), "GET", url, header)
		checkMessage(t, a, string(m.Body), m.ContentType, receipts[i])
		header.Del("Last-Event-Id")
		header.Set("If-Modified-Since", a.header.Get("Last-Modified"))
		header.Set("If-None-Match", a.header.Get("Etag"))
	}

	done := make(chan answer)
	go func() { done <- get(srv.Client(), "GET", url, header) }()
	waitListeners(t, h, ch, 1)
	r := mustPublish(t, h, ch, text("four"))
	checkMessage(t, <-done, "four", "", r)
}

func TestLongPollResume(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	url := srv.URL + "/sub/" + ch
	mustOpen(t, h, ch)
	first := mustPublish(t, h, ch, text("first"))
	cursor := mustOpen(t, h, ch) // the moment of opening: after "first"
	second := mustPublish(t, h, ch, text("second"))

	tests := []struct {
		name   string
		url    string
		header http.Header
	}{
		{"Last-Event-ID", url, http.Header{"Last-Event-Id": {first.ID}}},
		{"query", url + "?last_event_id=" + first.ID, nil},
		{"cursor from Open", url + "?last_event_id=" + cursor, nil},
		{"Last-Event-ID before IMS", url, http.Header{
			"Last-Event-Id": {first.ID}, "If-Modified-Since": {"Thu, 01 Jan 2037 00:00:00 GMT"}, "If-None-Match": {"0"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkMessage(t, get(srv.Client(), "GET", tt.url, tt.header), "second", "", second)
		})
	}
}

func TestLongPollWaits(t *testing.T) {
	tests := []struct {
		name   string
		header http.Header
		want   int
	}{
		{"no message", nil, http.StatusRequestTimeout},
		{"future position", http.Header{"Last-Event-Id": {"4102444800:0"}}, http.StatusRequestTimeout},
		{"closed while waiting", nil, http.StatusGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := New(Options{LongPollTimeout: time.Minute})
				mustOpen(t, h, ch)
				if tt.header != nil {
					mustPublish(t, h, ch, text("old"))
				}
				rec := httptest.NewRecorder()
				go func() {
					time.Sleep(30 * time.Second)
					var err error
					if tt.want == http.StatusGone {
						err = h.Close(context.Background(), ch)
					} else if tt.header != nil {
						_, err = h.Publish(context.Background(), ch, text("still before the position"))
					}
					if err != nil {
						t.Error(err)
					}
				}()
				req := httptest.NewRequest("GET", "/", nil)
				for k, v := range tt.header {
					req.Header[k] = v
				}
				start := time.Now()
				h.ServeListener(rec, req, ch)
				if rec.Code != tt.want || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") != "0" {
					t.Errorf("got %d %q, want %d and an empty body", rec.Code, rec.Body, tt.want)
				}
				if tt.want == http.StatusRequestTimeout && time.Since(start) != time.Minute {
					t.Errorf("answered after %v, want the LongPollTimeout", time.Since(start))
				}
				checkCommonHeaders(t, rec.Header(), true)
				synctest.Wait()
			})
		})
	}
}

func TestLongPollCloseOverHTTP(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	mustOpen(t, h, ch)
	done := make(chan answer)
	go func() { done <- get(srv.Client(), "GET", srv.URL+"/sub/"+ch, nil) }()
	waitListeners(t, h, ch, 1)
	if err := h.Close(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.err != nil || a.code != http.StatusGone || a.body != "" {
		t.Errorf("got %d %q (%v), want 410", a.code, a.body, a.err)
	}
}

func TestSubscriberRefusals(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/" + ch
	const ims = "Thu, 01 Jan 2026 00:00:00 GMT"
	es := http.Header{"Accept": {"text/event-stream"}}
	tests := []struct {
		name   string
		method string
		url    string
		header http.Header
		want   int
	}{
		{"never opened", "GET", srv.URL + "/sub/other", nil, http.StatusForbidden},
		{"never opened, EventSource", "GET", srv.URL + "/sub/other", es, http.StatusForbidden},
		{"invalid channel id", "GET", srv.URL + "/sub/a%20b", nil, http.StatusBadRequest},
		{"POST", "POST", url, nil, http.StatusMethodNotAllowed},
		{"DELETE, EventSource", "DELETE", url, es, http.StatusMethodNotAllowed},
		{"junk Last-Event-ID", "GET", url, http.Header{"Last-Event-Id": {"abc"}}, http.StatusBadRequest},
		{"junk Last-Event-ID, EventSource", "GET", url, http.Header{"Last-Event-Id": {"1:x"}, "Accept": {"text/event-stream"}}, http.StatusBadRequest},
		{"junk last_event_id", "GET", url + "?last_event_id=x", nil, http.StatusBadRequest},
		{"IMS without INM", "GET", url, http.Header{"If-Modified-Since": {ims}}, http.StatusBadRequest},
		{"junk IMS", "GET", url, http.Header{"If-Modified-Since": {"soon"}, "If-None-Match": {"0"}}, http.StatusBadRequest},
		{"junk INM", "GET", url, http.Header{"If-Modified-Since": {ims}, "If-None-Match": {"abc"}}, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkRefusal(t, get(srv.Client(), tt.method, tt.url, tt.header), tt.want, tt.header.Get("Accept") == "")
		})
	}
}

// checkRefusal checks a refused listener's answer, whatever the transport
// asked for: the status; for 400 a short plain-text reason; for 405
// "Allow: GET"; for 403 an empty answer, as Nchan gives; and the headers
// every answer carries (longPoll: those of long-poll answers too).
func checkRefusal(t *testing.T, a answer, want int, longPoll bool) {
	t.Helper()
	if a.err != nil || a.code != want {
		t.Fatalf("got %d %q (%v), want %d", a.code, a.body, a.err, want)
	}
	switch want {
	case http.StatusBadRequest:
		if a.body == "" || len(a.body) > 64 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/plain") {
			t.Errorf("400 with %q (%s), want a short plain-text reason", a.body, a.header.Get("Content-Type"))
		}
	case http.StatusMethodNotAllowed:
		if a.header.Get("Allow") != "GET" {
			t.Errorf("Allow %q, want GET", a.header.Get("Allow"))
		}
	case http.StatusForbidden:
		if a.body != "" || a.header.Get("Content-Length") != "0" || a.header.Get("Content-Type") != "" {
			t.Errorf("403 with body %q, headers %v; want it empty, as Nchan", a.body, a.header)
		}
	}
	checkCommonHeaders(t, a.header, longPoll)
}

func TestMaxListeners(t *testing.T) {
	h, srv := newTestHub(t, Options{MaxListeners: 2})
	mustOpen(t, h, ch)
	url := srv.URL + "/sub/" + ch
	done := make(chan answer)
	go func() { done <- get(srv.Client(), "GET", url, nil) }()
	openStream(t, url, nil)
	waitListeners(t, h, ch, 2)
	for _, header := range []http.Header{nil, {"Accept": {"text/event-stream"}}} {
		if a := get(srv.Client(), "GET", url, header); a.code != http.StatusForbidden {
			t.Errorf("third listener (%v): %d, want 403", header, a.code)
		}
	}
	mustPublish(t, h, ch, text("x"))
	<-done
	waitListeners(t, h, ch, 1)
	if a := get(srv.Client(), "GET", url, http.Header{"Last-Event-Id": {relay.NoCursor}}); a.code != http.StatusOK {
		t.Errorf("after one left: %d, want 200", a.code)
	}
}
