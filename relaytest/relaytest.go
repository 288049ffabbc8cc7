// Package relaytest is the conformance suite of sessionpush relays: [Run]
// checks a [relay.Relay] and its listening endpoint, reached through an
// application that uses the kit, against the wire contract that the
// embedded relay and Nchan share.
//
// What it checks, for every target alike:
//   - the Relay verbs: Open is idempotent and returns a cursor; Publish
//     reaches only open channels; Info and Close report a closed channel as
//     relay.ErrChannelNotFound; invalid IDs are refused before any request;
//     a message of the size limit passes, one byte more is refused with
//     relay.ErrMessageTooLarge;
//   - long-poll: a message comes with Last-Modified and Etag; sending them
//     back as If-Modified-Since and If-None-Match walks the buffer, each
//     message once, in order, then waits for the next one;
//   - EventSource: "id:" per message, the event name when there is one,
//     resume after an id by Last-Event-ID and by ?last_event_id= (the
//     cursor);
//   - a listener without a position (no Last-Event-ID, last_event_id or
//     If-Modified-Since) gets the messages published after it came, not
//     the buffer, on EventSource and long-poll alike: Nchan's
//     "nchan_subscriber_first_message newest", which the embedded relay
//     follows;
//   - refusals: 403 for a channel that was never opened, for a session
//     that does not own the channel, and over the listener cap;
//   - Close: a waiting long-poll gets 410, an EventSource stream ends.
package relaytest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// Session is a signed-in browser of the application under test.
type Session struct {
	// Client sends the session's cookies.
	Client *http.Client
	// Channel is the session's channel ID.
	Channel string
	// Cursor is what /subscribe answered with the channel.
	Cursor string
	// URL is the absolute URL to listen on the channel.
	URL string
}

// Target is a relay under test and the application around it.
type Target struct {
	// Relay is the publisher side.
	Relay relay.Relay
	// NewSession signs a new session in and opens its channel.
	NewSession func(t testing.TB) Session
	// Unopened signs a new session in without opening its channel; the
	// Session's Cursor is empty.
	Unopened func(t testing.TB) Session
	// MaxListeners is the listener cap per channel; zero skips that check.
	MaxListeners int
	// MaxMessageSize is the largest body the relay accepts.
	MaxMessageSize int
	// Timeout bounds each check's waits. Zero means 10 seconds.
	Timeout time.Duration
}

// Run runs the conformance suite against target, each check as a subtest.
func Run(t *testing.T, target Target) {
	if target.Timeout == 0 {
		target.Timeout = 10 * time.Second
	}
	s := &suite{Target: target}
	for _, c := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"Verbs", s.verbs},
		{"InvalidIDs", s.invalidIDs},
		{"SizeLimit", s.sizeLimit},
		{"LongPollWalk", s.longPollWalk},
		{"EventSourceResume", s.eventSourceResume},
		{"NoPositionWaitsForNext", s.noPosition},
		{"Unopened403", s.unopened},
		{"NotOwner403", s.notOwner},
		{"OverCap403", s.overCap},
		{"CloseEndsListeners", s.closeEndsListeners},
	} {
		t.Run(c.name, c.f)
	}
}

type suite struct{ Target }

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// newID returns a fresh ID in the form of the kit's channel IDs.
func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (s *suite) publish(t *testing.T, ch string, body, event string) relay.Receipt {
	t.Helper()
	rc, err := s.Relay.Publish(s.ctx(t), ch, relay.Message{Body: []byte(body), ContentType: "text/plain", Event: event})
	if err != nil {
		t.Fatalf("publish %q: %v", body, err)
	}
	return rc
}

func (s *suite) verbs(t *testing.T) {
	ctx := s.ctx(t)
	id := newID()
	if _, err := s.Relay.Publish(ctx, id, relay.Message{Body: []byte("x")}); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("Publish to a channel never opened: %v, want ErrChannelNotFound", err)
	}
	if _, err := s.Relay.Info(ctx, id); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("Info of a channel never opened (nor published to): %v, want ErrChannelNotFound", err)
	}
	c1, err := s.Relay.Open(ctx, id)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	c2, err := s.Relay.Open(ctx, id)
	if err != nil || c2 != c1 {
		t.Fatalf("second Open = %q, %v; want the same cursor %q (idempotent)", c2, err, c1)
	}
	rc := s.publish(t, id, "one", "")
	info, err := s.Relay.Info(ctx, id)
	if err != nil || info.Messages < 1 || info.LastMessageID != rc.ID || rc.ID == c1 {
		t.Fatalf("Info after a publish = %+v, %v; receipt %+v, cursor %q", info, err, rc, c1)
	}
	if c3, _ := s.Relay.Open(ctx, id); c3 != rc.ID {
		t.Fatalf("Open of an open channel = %q, want its newest message %q", c3, rc.ID)
	}
	if err := s.Relay.Close(ctx, id); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Relay.Info(ctx, id); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("Info after Close: %v, want ErrChannelNotFound", err)
	}
	if _, err := s.Relay.Publish(ctx, id, relay.Message{Body: []byte("x")}); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("Publish after Close: %v, want ErrChannelNotFound", err)
	}
	if err := s.Relay.Close(ctx, id); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("second Close: %v, want ErrChannelNotFound", err)
	}
}

func (s *suite) invalidIDs(t *testing.T) {
	ctx := s.ctx(t)
	for _, id := range []string{"", "../etc", "a/b", "a?id=b", "a%2Fb", "a b", strings.Repeat("x", relay.MaxIDLength+1)} {
		_, e1 := s.Relay.Open(ctx, id)
		_, e2 := s.Relay.Publish(ctx, id, relay.Message{Body: []byte("x")})
		_, e3 := s.Relay.Info(ctx, id)
		e4 := s.Relay.Close(ctx, id)
		for i, err := range []error{e1, e2, e3, e4} {
			if !errors.Is(err, relay.ErrInvalidID) {
				t.Errorf("verb %d with id %.30q: %v, want ErrInvalidID", i, id, err)
			}
		}
	}
}

func (s *suite) sizeLimit(t *testing.T) {
	sess := s.NewSession(t)
	ctx := s.ctx(t)
	body := strings.Repeat("a", s.MaxMessageSize)
	if _, err := s.Relay.Publish(ctx, sess.Channel, relay.Message{Body: []byte(body)}); err != nil {
		t.Fatalf("a message of the size limit: %v", err)
	}
	before, _ := s.Relay.Info(ctx, sess.Channel)
	_, err := s.Relay.Publish(ctx, sess.Channel, relay.Message{Body: []byte(body + "a")})
	if !errors.Is(err, relay.ErrMessageTooLarge) {
		t.Fatalf("one byte over the limit: %v, want ErrMessageTooLarge", err)
	}
	if after, _ := s.Relay.Info(ctx, sess.Channel); after.LastMessageID != before.LastMessageID {
		t.Fatalf("a refused message was published: %+v then %+v", before, after)
	}
	code, got, _ := s.poll(t, sess, "Last-Event-ID", sess.Cursor)
	if code != 200 || len(got) != s.MaxMessageSize {
		t.Fatalf("listener got %d and %d bytes, want 200 and %d", code, len(got), s.MaxMessageSize)
	}
}

// poll makes one long-poll request; hdr are header name/value pairs. A
// request that fails outright gives the code 0.
func (s *suite) poll(t *testing.T, sess Session, hdr ...string) (int, string, http.Header) {
	req, err := http.NewRequestWithContext(s.ctx(t), "GET", sess.URL, nil)
	if err != nil {
		return 0, err.Error(), nil
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := sess.Client.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// waitListeners waits until channel has at least n listeners.
func (s *suite) waitListeners(t *testing.T, ch string, n int) {
	t.Helper()
	deadline := time.Now().Add(s.Timeout)
	for {
		info, err := s.Relay.Info(context.Background(), ch)
		if err == nil && info.Listeners >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("channel %s: want %d listeners, have %+v (%v)", ch, n, info, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *suite) longPollWalk(t *testing.T) {
	sess := s.NewSession(t)
	want := []string{"one", "two", "three"}
	for _, b := range want {
		s.publish(t, sess.Channel, b, "")
	}
	var got []string
	hdr := []string{"Last-Event-ID", sess.Cursor}
	for range want {
		code, body, h := s.poll(t, sess, hdr...)
		if code != 200 || h.Get("Last-Modified") == "" || h.Get("Etag") == "" {
			t.Fatalf("long-poll: %d %q, Last-Modified %q, Etag %q", code, body, h.Get("Last-Modified"), h.Get("Etag"))
		}
		got = append(got, body)
		hdr = []string{"If-Modified-Since", h.Get("Last-Modified"), "If-None-Match", h.Get("Etag")}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("long-poll walk got %q, want %q", got, want)
	}
	done := make(chan string, 1)
	go func() {
		code, body, _ := s.poll(t, sess, hdr...)
		done <- fmt.Sprint(code, " ", body)
	}()
	s.waitListeners(t, sess.Channel, 1)
	s.publish(t, sess.Channel, "four", "")
	if r := <-done; r != "200 four" {
		t.Fatalf("waiting long-poll got %q, want the next message", r)
	}
}

// stream opens an EventSource stream; hdr are header name/value pairs.
func (s *suite) stream(t *testing.T, sess Session, url string, hdr ...string) (*bufio.Reader, int) {
	t.Helper()
	req, err := http.NewRequestWithContext(s.ctx(t), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := sess.Client.Do(req)
	if err != nil {
		t.Fatalf("EventSource: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		return nil, resp.StatusCode
	}
	return bufio.NewReader(resp.Body), 200
}

// Event is one EventSource event.
type Event struct {
	ID   string // the "id:" field
	Name string // the "event:" field, empty for an unnamed event
	Data string // the "data:" lines joined with LF
}

// ReadEvent reads the next event from an EventSource stream, skipping
// comments. ok is false when the stream ends, or at the ":410" comment with
// which the embedded relay and Nchan end a closed channel's streams.
func ReadEvent(r *bufio.Reader) (ev Event, ok bool) {
	var data []string
	seen := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return Event{}, false
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if seen {
				ev.Data = strings.Join(data, "\n")
				return ev, true
			}
		case strings.HasPrefix(line, ":410"):
			return Event{}, false
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.ID, seen = line[4:], true
		case strings.HasPrefix(line, "event: "):
			ev.Name, seen = line[7:], true
		case strings.HasPrefix(line, "data:"):
			data, seen = append(data, strings.TrimPrefix(line[5:], " ")), true
		}
	}
}

func (s *suite) eventSourceResume(t *testing.T) {
	sess := s.NewSession(t)
	rc1 := s.publish(t, sess.Channel, "one", "")
	s.publish(t, sess.Channel, "two\nlines", "upd")
	s.publish(t, sess.Channel, "three", "")

	r, code := s.stream(t, sess, withQuery(sess.URL, "last_event_id", sess.Cursor))
	if code != 200 {
		t.Fatalf("EventSource from the cursor: %d", code)
	}
	var got []Event
	for range 3 {
		ev, ok := ReadEvent(r)
		if !ok {
			t.Fatalf("stream ended after %+v", got)
		}
		got = append(got, ev)
	}
	if got[0].Data != "one" || got[0].ID != rc1.ID || got[1].Data != "two\nlines" || got[1].Name != "upd" || got[2].Data != "three" || got[2].Name != "" {
		t.Fatalf("EventSource from the cursor got %+v", got)
	}
	r2, code := s.stream(t, sess, sess.URL, "Last-Event-ID", got[1].ID)
	if code != 200 {
		t.Fatalf("EventSource by Last-Event-ID: %d", code)
	}
	if ev, _ := ReadEvent(r2); ev.Data != "three" || ev.ID != got[2].ID {
		t.Fatalf("resume after %s got %+v, want three", got[1].ID, ev)
	}
	s.publish(t, sess.Channel, "four", "")
	if ev, _ := ReadEvent(r2); ev.Data != "four" {
		t.Fatalf("live event: %+v", ev)
	}
}

// noPosition checks that a listener without a position skips what is
// buffered: two messages are, then a listener connects without one, and
// the first message it gets is the third, published once it is counted.
func (s *suite) noPosition(t *testing.T) {
	t.Run("EventSource", func(t *testing.T) {
		sess := s.NewSession(t)
		s.publish(t, sess.Channel, "old1", "")
		s.publish(t, sess.Channel, "old2", "")
		r, code := s.stream(t, sess, sess.URL)
		if code != 200 {
			t.Fatalf("EventSource without a position: %d", code)
		}
		s.waitListeners(t, sess.Channel, 1)
		rc := s.publish(t, sess.Channel, "new", "")
		if ev, ok := ReadEvent(r); !ok || ev.Data != "new" || ev.ID != rc.ID {
			t.Fatalf("EventSource without a position got %+v first, want the message published after it came (%s)", ev, rc.ID)
		}
	})
	t.Run("LongPoll", func(t *testing.T) {
		sess := s.NewSession(t)
		s.publish(t, sess.Channel, "old1", "")
		s.publish(t, sess.Channel, "old2", "")
		done := make(chan string, 1)
		go func() {
			code, body, _ := s.poll(t, sess)
			done <- fmt.Sprint(code, " ", body)
		}()
		// Until the listener is counted, an answer is one from the buffer.
		deadline := time.Now().Add(s.Timeout)
		for {
			select {
			case r := <-done:
				t.Fatalf("long-poll without a position got %q before any new message, want it to wait", r)
			default:
			}
			if info, err := s.Relay.Info(context.Background(), sess.Channel); err == nil && info.Listeners >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the long-poll without a position was never counted as a listener")
			}
			time.Sleep(5 * time.Millisecond)
		}
		s.publish(t, sess.Channel, "new", "")
		if r := <-done; r != "200 new" {
			t.Fatalf("long-poll without a position got %q, want the message published after it came", r)
		}
	})
}

func withQuery(url, k, v string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + k + "=" + v
}

func (s *suite) unopened(t *testing.T) {
	sess := s.Unopened(t)
	if code, _, _ := s.poll(t, sess); code != 403 {
		t.Fatalf("long-poll on a channel never opened: %d, want 403", code)
	}
	if _, code := s.stream(t, sess, sess.URL); code != 403 {
		t.Fatalf("EventSource on a channel never opened: %d, want 403", code)
	}
}

func (s *suite) notOwner(t *testing.T) {
	owner, other := s.NewSession(t), s.NewSession(t)
	thief := Session{Client: other.Client, Channel: owner.Channel, URL: owner.URL}
	if code, _, _ := s.poll(t, thief, "Last-Event-ID", owner.Cursor); code != 403 {
		t.Fatalf("long-poll with another session's cookie: %d, want 403", code)
	}
	if _, code := s.stream(t, thief, owner.URL); code != 403 {
		t.Fatalf("EventSource with another session's cookie: %d, want 403", code)
	}
	anon := Session{Client: &http.Client{}, URL: owner.URL}
	if code, _, _ := s.poll(t, anon, "Last-Event-ID", owner.Cursor); code != 403 {
		t.Fatalf("long-poll without a cookie: %d, want 403", code)
	}
}

func (s *suite) overCap(t *testing.T) {
	if s.MaxListeners <= 0 {
		t.Skip("Target.MaxListeners is zero")
	}
	sess := s.NewSession(t)
	for i := range s.MaxListeners {
		if _, code := s.stream(t, sess, sess.URL); code != 200 {
			t.Fatalf("listener %d of %d: %d", i+1, s.MaxListeners, code)
		}
	}
	s.waitListeners(t, sess.Channel, s.MaxListeners)
	if _, code := s.stream(t, sess, sess.URL); code != 403 {
		t.Fatalf("EventSource over the cap: %d, want 403", code)
	}
	if code, _, _ := s.poll(t, sess, "Last-Event-ID", sess.Cursor); code != 403 {
		t.Fatalf("long-poll over the cap: %d, want 403", code)
	}
}

func (s *suite) closeEndsListeners(t *testing.T) {
	sess := s.NewSession(t)
	r, code := s.stream(t, sess, withQuery(sess.URL, "last_event_id", sess.Cursor))
	if code != 200 {
		t.Fatalf("EventSource: %d", code)
	}
	lp := make(chan int, 1)
	go func() {
		code, _, _ := s.poll(t, sess, "Last-Event-ID", sess.Cursor)
		lp <- code
	}()
	s.waitListeners(t, sess.Channel, 2)
	if err := s.Relay.Close(s.ctx(t), sess.Channel); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if code := <-lp; code != http.StatusGone {
		t.Fatalf("waiting long-poll after Close: %d, want 410", code)
	}
	if ev, ok := ReadEvent(r); ok {
		t.Fatalf("EventSource after Close: %+v, want the stream to end", ev)
	}
}
