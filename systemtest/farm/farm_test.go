package farm_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

func TestMain(m *testing.M) {
	farm.Main()
	goleak.VerifyTestMain(m)
}

// server serves a hub's EventSource listeners under /sub/{channel} and
// records each request's Cookie header.
func server(t *testing.T) (*hub.Hub, string, chan string) {
	h := hub.New(hub.Options{MaxListeners: -1, Logger: slog.New(slog.DiscardHandler)})
	cookies := make(chan string, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case cookies <- r.Header.Get("Cookie"):
		default:
		}
		ch, ok := strings.CutPrefix(r.URL.Path, "/sub/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		h.ServeListener(w, r, ch)
	}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.Shutdown(ctx)
		srv.Close()
	})
	return h, srv.Listener.Addr().String(), cookies
}

func TestDeliveriesStatsAndCheck(t *testing.T) {
	h, addr, cookies := server(t)
	ctx := context.Background()
	const n = 20
	var ls []farm.Listener
	for i := range n {
		ch := fmt.Sprintf("c%d", i%2)
		cur, err := h.Open(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, farm.Listener{Addr: addr, Path: "/sub/" + ch, LastEventID: cur,
			Header: http.Header{"Cookie": {"s=abc"}}})
	}
	f := farm.Start(t, farm.Options{Listeners: ls, Parallel: 4})
	for range n {
		if c := <-cookies; c != "s=abc" {
			t.Fatalf("listener sent Cookie %q", c)
		}
	}
	// Every listener is connected once Start returns.
	c, err := f.Counters()
	if err != nil || c.Connected != n || c.Errors != 0 {
		t.Fatalf("counters %+v, %v", c, err)
	}
	sent := time.Now()
	for _, ch := range []string{"c0", "c1"} {
		if _, err := h.Publish(ctx, ch, relay.Message{Body: farm.Body("m1", sent, 10)}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := f.Wait("m1", n, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if s.Count != n || s.Stamped != n || s.Key != "m1" {
		t.Fatalf("stats %+v", s)
	}
	if !s.MinSent.Equal(time.Unix(0, sent.UnixNano())) || s.First.Before(sent) || s.Last.Before(s.First) {
		t.Fatalf("times: sent %v, stats %+v", sent, s)
	}
	if s.P50 <= 0 || s.P50 > s.P99 || s.P99 > s.Max || s.Max != s.Last.Sub(s.MinSent) {
		t.Fatalf("latencies %+v", s)
	}
	if v, err := f.Check([]string{"m1"}, 50*time.Millisecond); err != nil || v != "" {
		t.Fatalf("check: %q, %v", v, err)
	}

	// An unstamped body is its own key; one channel only: Check sees the
	// listeners of c1 lacking it, and the stray key.
	if _, err := h.Publish(ctx, "c0", relay.Message{Body: []byte("plain")}); err != nil {
		t.Fatal(err)
	}
	s, err = f.Wait("plain", n/2, time.Minute)
	if err != nil || s.Count != n/2 || s.Stamped != 0 || s.P99 != 0 {
		t.Fatalf("plain: %+v, %v", s, err)
	}
	v, err := f.Check([]string{"m1"}, 50*time.Millisecond)
	if err != nil || !strings.Contains(v, `10 unexpected events of key "plain"`) {
		t.Fatalf("check with a stray key: %q, %v", v, err)
	}
	v, _ = f.Check([]string{"m1", "plain"}, 0)
	if !strings.Contains(v, `10 listeners did not get "plain" exactly once`) {
		t.Fatalf("check with a missing delivery: %q", v)
	}

	// A Wait that cannot be met times out with the stats so far.
	s, err = f.Wait("m1", n+1, 100*time.Millisecond)
	if err == nil || s.Count != n {
		t.Fatalf("impossible wait: %+v, %v", s, err)
	}

	// Closing a channel ends its streams: disconnects, no reconnects.
	if err := h.Close(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		c, err = f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if c.Disconnects == n/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters after closing c1: %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c.Connected != n/2 || c.Reconnects != 0 {
		t.Fatalf("counters after closing c1: %+v", c)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Counters(); err == nil {
		t.Fatal("Counters after Close succeeded")
	}
}

func TestReconnect(t *testing.T) {
	h, addr, _ := server(t)
	ctx := context.Background()
	cur, _ := h.Open(ctx, "r")
	h.SetMaxListeners("r", -1)
	f := farm.Start(t, farm.Options{Listeners: []farm.Listener{{Addr: addr, Path: "/sub/r", LastEventID: cur}}, Reconnect: true})
	h.Publish(ctx, "r", relay.Message{Body: farm.Body("a", time.Now(), 0)})
	if _, err := f.Wait("a", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	// Shutdown ends the stream; reconnects get 503, so the listener gives
	// up after its retries: one disconnect, errors, no reconnect.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if c.Errors == 3 {
			if c.Disconnects != 1 || c.Reconnects != 0 || c.Connected != 0 || !strings.Contains(c.FirstError, "503") {
				t.Fatalf("counters %+v", c)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConnectFailure(t *testing.T) {
	_, addr, _ := server(t)
	// Not open: the hub answers 403, and Start's error says so.
	_, err := farm.New(farm.Options{Listeners: []farm.Listener{{Addr: addr, Path: "/sub/nope"}}})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Start to a closed channel: %v", err)
	}
}

func ExampleBody() {
	b := farm.Body("round-1", time.Unix(1, 5), 3)
	fmt.Println(string(b))
	// Output: {"farm":"round-1","sent":1000000005,"pad":"xxx"}
}
