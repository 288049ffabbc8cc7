package nchan

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/relaytest"
)

// startFaultNchan starts nchanConf with a buffer of 100 messages and
// nginx's keepalive_requests at keepaliveRequests.
func startFaultNchan(t *testing.T, redisAddr string, keepaliveRequests int) *servers.Nginx {
	t.Helper()
	return startNchanWith(t, nchanVars{Redis: redisAddr, Buffer: 100, KeepaliveRequests: keepaliveRequests})
}

// nginx closing each connection after 5 requests (keepalive_requests 5)
// while 8 goroutines publish: nothing is lost or doubled, through the
// Client's own transport and through net/http.
func TestFaultNginxKeepaliveRequests(t *testing.T) {
	bothPaths(t, testFaultNginxKeepaliveRequests)
}

func testFaultNginxKeepaliveRequests(t *testing.T, opts Options) {
	n := startFaultNchan(t, "", 5)
	c := newClient(t, n, "/pub/{channel}", opts)
	defer c.CloseIdleConnections()
	ctx := ctxTimeout(t, 30*time.Second)
	const workers, each = 8, 40
	for g := range workers {
		if _, err := c.Open(ctx, fmt.Sprintf("ka-%d", g)); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, workers)
	for g := range workers {
		go func() {
			for i := range each {
				if _, err := c.Publish(ctx, fmt.Sprintf("ka-%d", g), relay.Message{Body: fmt.Appendf(nil, "%d", i)}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for g := range workers {
		// Open's empty message and the buffer's last 99 of... each < 100.
		info, err := c.Info(ctx, fmt.Sprintf("ka-%d", g))
		if err != nil || info.Messages != each+1 {
			t.Errorf("channel %d: %+v, %v; want %d messages", g, info, err, each+1)
		}
	}
}

// esListener is an EventSource listener on a raw TCP connection.
type esListener struct {
	conn net.Conn
	r    *bufio.Reader
}

// listen opens /sub/<id> as EventSource from lastID over HTTP/1.1.
func listen(t *testing.T, n *servers.Nginx, id, lastID string) *esListener {
	t.Helper()
	conn, err := net.Dial("tcp", n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req, _ := http.NewRequest(http.MethodGet, n.URL+"/sub/"+id, nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", lastID)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("EventSource /sub/%s: %s %q", id, resp.Status, b)
	}
	return &esListener{conn: conn, r: bufio.NewReader(resp.Body)}
}

// waitStatus polls GET url until it answers want (a status, or 0 for a
// refused connection), for at most 30 s.
func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := 0
		resp, err := hc.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got = resp.StatusCode
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d (%v), still not %d after 30 s", url, got, err, want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// publishAll publishes bodies and returns their IDs.
func publishAll(t *testing.T, ctx context.Context, c *Client, id string, bodies ...string) []string {
	t.Helper()
	var ids []string
	for _, b := range bodies {
		r, err := c.Publish(ctx, id, relay.Message{Body: []byte(b)})
		if err != nil {
			t.Fatalf("publish %q: %v", b, err)
		}
		ids = append(ids, r.ID)
	}
	return ids
}

// checkOutage publishes while nginx is down: with a deadline, the error
// wraps context.DeadlineExceeded and the refused connection; without
// retrying, it is the refused connection at once.
func checkOutage(t *testing.T, c *Client, n *servers.Nginx, id string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		_, err := c.Publish(ctx, id, relay.Message{Body: []byte("lost")})
		done <- err
	}()
	select {
	case err := <-done:
		var e *Error
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &e) || e.Op != "publish" {
			t.Errorf("Publish while nginx is down: %v; want an *Error wrapping ECONNREFUSED and context.DeadlineExceeded", err)
		}
		t.Logf("while nginx is down: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Publish while nginx is down did not return after its 400 ms deadline")
	}
	once, err := New(n.URL+"/pub/{channel}", Options{MaxRetryTime: -1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = once.Info(context.Background(), id)
	if !errors.Is(err, syscall.ECONNREFUSED) || once.Stats().Failures.Unavailable != 1 {
		t.Errorf("Info without retrying while nginx is down: %v, want ECONNREFUSED counted as unavailable", err)
	}
}

// nginx (memory store) stopped and started while a publisher runs: during
// the outage Publish fails with the refused connection and the deadline;
// afterwards the channel is gone (memory store), Publish says so with
// relay.ErrChannelNotFound, and Open then Publish work again on the same
// Client.
func TestFaultNginxRestartMemoryStore(t *testing.T) {
	n := startFaultNchan(t, "", 1000)
	c := newClient(t, n, "/pub/{channel}", Options{ExistsTTL: -1})
	defer c.CloseIdleConnections()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := c.Open(ctx, "mem"); err != nil {
		t.Fatal(err)
	}
	publishAll(t, ctx, c, "mem", "before")

	// A publisher in flight across the stop: publishes that began before
	// nginx was down succeed or fail with an *Error; the first that began
	// after fails with the refused connection.
	stopped := make(chan struct{})
	after := make(chan error, 1)
	go func() {
		for {
			began := false
			select {
			case <-stopped:
				began = true
			default:
			}
			pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err := c.Publish(pctx, "mem", relay.Message{Body: []byte("flight")})
			cancel()
			var e *Error
			if began || err != nil && !errors.As(err, &e) {
				after <- err
				return
			}
		}
	}()
	n.Stop()
	close(stopped)
	if err := <-after; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("publish begun after the stop: %v, want an error wrapping ECONNREFUSED", err)
	}
	checkOutage(t, c, n, "mem")

	n.Start()
	_, err := c.Publish(ctx, "mem", relay.Message{Body: []byte("after")})
	if !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("Publish after a restart of the memory store: %v, want relay.ErrChannelNotFound", err)
	}
	if _, err := c.Open(ctx, "mem"); err != nil {
		t.Fatal(err)
	}
	publishAll(t, ctx, c, "mem", "after")
	if info, err := c.Info(ctx, "mem"); err != nil || info.Messages != 2 { // Open's and "after"
		t.Errorf("after the restart: %+v, %v; want 2 messages", info, err)
	}
}

// nginx with Redis stopped and started: the channel and its messages
// survive, Publish works again without a new Open, and an EventSource
// listener that reconnects with Last-Event-ID gets every message once, in
// order, those published while it was away included.
func TestFaultNginxRestartRedis(t *testing.T) {
	r := servers.StartRedis(t)
	n := startFaultNchan(t, r.Addr, 1000)
	c := newClient(t, n, "/pub/{channel}", Options{})
	defer c.CloseIdleConnections()
	ctx := ctxTimeout(t, 60*time.Second)
	cursor, err := c.Open(ctx, "rd")
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t, n, "rd", cursor)
	waitSubscribers(t, c, "rd", 1)
	want := publishAll(t, ctx, c, "rd", "m1", "m2", "m3")
	var got []relaytest.Event
	for range 3 {
		ev, ok := relaytest.ReadEvent(l.r)
		if !ok {
			t.Fatal("stream ended before 3 events")
		}
		got = append(got, ev)
	}

	n.Stop()
	if ev, ok := relaytest.ReadEvent(l.r); ok {
		t.Fatalf("event %+v after nginx stopped", ev)
	}
	l.conn.Close()
	checkOutage(t, c, n, "rd")

	n.Start()
	// The channel survived in Redis: Publish goes on (503s while Nchan
	// reconnects to Redis are retried).
	want = append(want, publishAll(t, ctx, c, "rd", "m4")...)
	l2 := listen(t, n, "rd", got[len(got)-1].ID)
	waitSubscribers(t, c, "rd", 1)
	want = append(want, publishAll(t, ctx, c, "rd", "m5")...)
	for range 2 {
		ev, ok := relaytest.ReadEvent(l2.r)
		if !ok {
			t.Fatal("resumed stream ended early")
		}
		got = append(got, ev)
	}
	for i, ev := range got {
		if ev.ID != want[i] || ev.Data != fmt.Sprintf("m%d", i+1) {
			t.Errorf("event %d: %+v, want id %s data m%d", i, ev, want[i], i+1)
		}
	}
	if info, err := c.Info(ctx, "rd"); err != nil || info.Messages != 6 { // Open's and m1..m5
		t.Errorf("after the restart: %+v, %v; want 6 messages", info, err)
	}
}

// Redis stopped and started behind Nchan: Nchan answers 503 meanwhile. A
// Publish whose deadline is shorter than the outage fails with the 503 and
// context.DeadlineExceeded; one whose deadline outlives it succeeds, once.
func TestFaultRedisRestart(t *testing.T) {
	r := servers.StartRedis(t)
	n := startFaultNchan(t, r.Addr, 1000)
	// The channel stays known open for the whole test, so that Publish
	// sends its POST (which Nchan answers 503) rather than a check.
	c := newClient(t, n, "/pub/{channel}", Options{ExistsTTL: time.Hour, MaxRetryWait: 100 * time.Millisecond})
	defer c.CloseIdleConnections()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := c.Open(ctx, "rs"); err != nil {
		t.Fatal(err)
	}
	publishAll(t, ctx, c, "rs", "before")

	r.Stop()
	waitStatus(t, n.URL+"/pub/rs", http.StatusServiceUnavailable)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := c.Publish(short, "rs", relay.Message{Body: []byte("short")})
	cancel()
	var e *Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable {
		t.Fatalf("Publish with a deadline inside the Redis outage: %v, want a 503 *Error wrapping context.DeadlineExceeded", err)
	}
	t.Logf("short deadline: %v", err)

	retries := c.Stats().Retries
	long := make(chan error, 1)
	go func() {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := c.Publish(lctx, "rs", relay.Message{Body: []byte("long")})
		long <- err
	}()
	// Redis comes back once the long Publish has met a 503.
	for c.Stats().Retries == retries {
		select {
		case err := <-long:
			t.Fatalf("Publish returned during the outage: %v", err)
		case <-time.After(10 * time.Millisecond): // polling interval
		}
	}
	r.Start()
	if err := <-long; err != nil {
		t.Fatalf("Publish whose deadline outlives the outage: %v", err)
	}
	// Redis lost its data: the POST made the channel anew, with exactly
	// the one message.
	if info, err := c.Info(ctx, "rs"); err != nil || info.Messages != 1 {
		t.Errorf("after the outage: %+v, %v; want exactly the one message", info, err)
	}
	if st := c.Stats(); st.Failures.Timeout != 1 || st.Retries <= retries {
		t.Errorf("stats %+v: want one timeout and the retries counted", st)
	}
}
