package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/internal/farm"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
)

const broadcastID = sessionpush.SuggestedBroadcastChannel

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, s)
	}
	return n
}

// countingRelay counts the relay calls made through it.
type countingRelay struct {
	relay.Relay
	publish, open, info, close atomic.Int64
}

func (c *countingRelay) Open(ctx context.Context, ch string) (string, error) {
	c.open.Add(1)
	return c.Relay.Open(ctx, ch)
}

func (c *countingRelay) Publish(ctx context.Context, ch string, m relay.Message) (relay.Receipt, error) {
	c.publish.Add(1)
	return c.Relay.Publish(ctx, ch, m)
}

func (c *countingRelay) Info(ctx context.Context, ch string) (relay.Info, error) {
	c.info.Add(1)
	return c.Relay.Info(ctx, ch)
}

func (c *countingRelay) Close(ctx context.Context, ch string) error {
	c.close.Add(1)
	return c.Relay.Close(ctx, ch)
}

func (c *countingRelay) reset() {
	c.publish.Store(0)
	c.open.Store(0)
	c.info.Store(0)
	c.close.Store(0)
}

func (c *countingRelay) calls() int64 {
	return c.publish.Load() + c.open.Load() + c.info.Load() + c.close.Load()
}

// countingTransport counts HTTP requests by method.
type countingTransport struct {
	http.RoundTripper
	get, post, other atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	switch r.Method {
	case http.MethodGet:
		c.get.Add(1)
	case http.MethodPost:
		c.post.Add(1)
	default:
		c.other.Add(1)
	}
	return c.RoundTripper.RoundTrip(r)
}

// CloseIdleConnections passes on to the transport, for
// nchan.Client.CloseIdleConnections.
func (c *countingTransport) CloseIdleConnections() {
	if ci, ok := c.RoundTripper.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

func (c *countingTransport) reset() {
	c.get.Store(0)
	c.post.Store(0)
	c.other.Store(0)
}

// target is one relay under test.
type target struct {
	name   string
	relay  relay.Relay // the raw relay: setup and checks go around the counter
	addr   string      // host:port of the subscriber endpoint
	http   *countingTransport
	uncap  func(channel string) error // lifts the broadcast channel's listener cap
	finish func()                     // after all listeners are gone
}

// waitInfo polls the raw relay until every channel in ids reports want
// listeners.
func waitInfo(t *testing.T, rel relay.Relay, ids []string, want int, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
		fail atomic.Value
	)
	for _, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for {
				info, err := rel.Info(ctx, id)
				if err == nil && info.Subscribers == want {
					return
				}
				if ctx.Err() != nil {
					fail.CompareAndSwap(nil, fmt.Sprintf("channel %s: %d listeners (err %v), want %d", id, info.Subscribers, err, want))
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if f := fail.Load(); f != nil {
		t.Fatal(f)
	}
}

// openAll opens ids on rel, 32 at a time, and returns their cursors.
func openAll(t *testing.T, rel relay.Relay, ids []string) []string {
	t.Helper()
	cursors := make([]string, len(ids))
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
		fail atomic.Value
	)
	for i, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := rel.Open(context.Background(), id)
			if err != nil {
				fail.CompareAndSwap(nil, err)
			}
			cursors[i] = c
		})
	}
	wg.Wait()
	if err := fail.Load(); err != nil {
		t.Fatal(err)
	}
	return cursors
}

// result is the measurement of one relay and mode.
type result struct {
	relay, mode string
	n           int
	reached     int // what Broadcast returned (last round)
	calls       int64
	publishes   int64
	get, post   int64 // HTTP requests (Nchan only)
	call, last  []time.Duration
}

type stats struct{ med, lo, hi time.Duration }

func summarize(d []time.Duration) stats {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return stats{}
	}
	return stats{med: s[len(s)/2], lo: s[0], hi: s[len(s)-1]}
}

func (s stats) String() string {
	return fmt.Sprintf("%v [%v–%v]", round(s.med), round(s.lo), round(s.hi))
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// runMode measures one mode on tg: N listeners, one per channel (fan-out),
// or all on the broadcast channel.
func runMode(t *testing.T, tg *target, broadcast bool, n, rounds, concurrency int) result {
	mode := "fan-out"
	if broadcast {
		mode = "broadcast channel"
	}
	res := result{relay: tg.name, mode: mode, n: n}

	// N open channels in the store (and, for fan-out, on the relay).
	store := sessionpush.NewMemoryStore()
	ids := make([]string, n)
	now := time.Now()
	for i := range ids {
		ids[i] = uuid.NewString()
		if err := store.Add(context.Background(), sessionpush.Record{ID: ids[i], User: "u" + strconv.Itoa(i), Opened: now, LastSeen: now}); err != nil {
			t.Fatal(err)
		}
	}
	counter := &countingRelay{Relay: tg.relay}
	cfg := sessionpush.Config{
		Sessions:    sessions.NewCookieStore(securecookie.GenerateRandomKey(32)),
		Relay:       counter,
		Store:       store,
		Concurrency: concurrency,
		Logger:      slog.New(slog.DiscardHandler),
	}
	if broadcast {
		cfg.BroadcastChannel = broadcastID
	}
	mgr, err := sessionpush.New(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The messages: a warm-up (round 0), then the measured rounds.
	total := rounds + 1
	keys := make([]string, total)
	for r := range keys {
		keys[r] = fmt.Sprintf("%s-%s-%d", tg.name, strings.ReplaceAll(mode, " ", "-"), r)
	}

	var ls []farm.Listener
	if broadcast {
		c := openAll(t, tg.relay, []string{broadcastID})[0]
		if err := tg.uncap(broadcastID); err != nil {
			t.Fatal(err)
		}
		for range n {
			ls = append(ls, farm.Listener{Addr: tg.addr, Path: "/sub/" + broadcastID, LastEventID: c})
		}
	} else {
		cursors := openAll(t, tg.relay, ids)
		for i, id := range ids {
			ls = append(ls, farm.Listener{Addr: tg.addr, Path: "/sub/" + id, LastEventID: cursors[i]})
		}
	}

	f := farm.Start(t, farm.Options{Listeners: ls})
	if broadcast {
		waitInfo(t, tg.relay, []string{broadcastID}, n, time.Minute)
	} else {
		waitInfo(t, tg.relay, ids, 1, 2*time.Minute)
	}

	wait := time.Minute + time.Duration(n)*time.Millisecond
	for r := range total {
		counter.reset()
		if tg.http != nil {
			tg.http.reset()
		}
		start := time.Now()
		reached, err := mgr.Broadcast(context.Background(), farm.NewStamp(keys[r]))
		call := time.Since(start)
		if err != nil {
			t.Fatalf("%s %s: Broadcast %d: %v", tg.name, mode, r, err)
		}
		if reached != n {
			t.Errorf("%s %s: Broadcast %d reached %d, want %d", tg.name, mode, r, reached, n)
		}
		st, err := f.Wait(keys[r], n, wait)
		if err != nil {
			v, _ := f.Check(keys[:r+1], 0)
			t.Fatalf("%s %s: round %d: %v (%d of %d deliveries): %s", tg.name, mode, r, err, st.Count, n, v)
		}
		last := st.Last.Sub(start)
		if r == 0 {
			continue // warm-up
		}
		res.reached = reached
		res.call = append(res.call, call)
		res.last = append(res.last, last)
		// Counts are the same every round unless something is off; keep
		// the largest.
		res.calls = max(res.calls, counter.calls())
		res.publishes = max(res.publishes, counter.publish.Load())
		if tg.http != nil {
			res.get = max(res.get, tg.http.get.Load())
			res.post = max(res.post, tg.http.post.Load()+tg.http.other.Load())
		}
	}
	if v, err := f.Check(keys, 300*time.Millisecond); err != nil || v != "" {
		t.Errorf("%s %s: %s %v", tg.name, mode, v, err)
	}
	if err := f.Close(); err != nil { // the farm closes its listeners and exits
		t.Error(err)
	}

	if !broadcast {
		// Close the channels so that the next mode starts clean.
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for _, id := range ids {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				tg.relay.Close(context.Background(), id)
			})
		}
		wg.Wait()
	} else {
		tg.relay.Close(context.Background(), broadcastID)
	}
	return res
}

func embeddedTarget(t *testing.T, n int) *target {
	h := hub.New(hub.Options{MaxListeners: 10, Logger: slog.New(slog.DiscardHandler)})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		h.ServeSubscriber(w, r, r.PathValue("channel"))
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = nil
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("hub shutdown: %v", err)
		}
		srv.Close()
	})
	return &target{
		name:  "embedded",
		relay: h,
		addr:  srv.Listener.Addr().String(),
		uncap: func(ch string) error { return h.SetMaxListeners(ch, -1) },
	}
}

// nchanConf: a publisher for 127.0.0.1, a subscriber location for session
// channels (cap 10, as sessionpush.DefaultMaxListeners; no
// nchan_authorize_request: the benchmark has no application) and the exact
// location of the broadcast channel without a cap, as in
// example/nginx/nginx.conf. Connections and descriptors for 2N.
const nchanConf = `
{{template "main" .}}
worker_rlimit_nofile {{.NoFile}};
error_log error.log warn;
events { worker_connections {{.Conns}}; }
http {
  access_log off;
{{template "temp_paths"}}
  nchan_shared_memory_size 256M;
  server {
    listen {{.Addr}} backlog=4096;
    client_max_body_size 64k;
    location ~ "^/pub/([0-9a-f-]{36})$" {
      allow 127.0.0.1;
      deny all;
      nchan_publisher http;
      nchan_channel_id $1;
    }
    location ~ "^/sub/([0-9a-f-]{36})$" {
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_max_channel_subscribers 10;
    }
    location = /sub/{{.Broadcast}} {
      nchan_subscriber eventsource;
      nchan_channel_id {{.Broadcast}};
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_max_channel_subscribers 0;
    }
  }
}
`

func nchanTarget(t *testing.T, n int) *target {
	// Registered before StartNginxWith, so it runs after nginx's stop.
	var master, worker int
	t.Cleanup(func() {
		time.Sleep(100 * time.Millisecond) // reaped
		for _, pid := range []int{master, worker} {
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), "nginx") {
					t.Errorf("nginx process %d still running after the test", pid)
				}
			}
		}
	})
	ngx := servers.StartNginxWith(t, nchanConf, servers.NginxOptions{
		Vars: map[string]any{
			"Broadcast": broadcastID,
			"NoFile":    2*n + 2048,
			"Conns":     2*n + 1024,
		},
		ReadyPath: "/pub/00000000-0000-4000-8000-000000000000",
	})
	master, worker = ngx.PID(), ngx.WorkerPID()
	ct := &countingTransport{RoundTripper: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        128,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
	}}
	client, err := nchan.New(ngx.URL+"/pub/{channel}", nchan.Options{
		HTTPClient: &http.Client{Transport: ct},
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after nginx's stop, so it runs before it: idle keep-alive
	// connections would hold nginx's graceful stop.
	t.Cleanup(client.CloseIdleConnections)
	return &target{
		name:  "nchan",
		relay: client,
		addr:  ngx.Addr,
		http:  ct,
		uncap: func(string) error { return nil }, // nchan_max_channel_subscribers 0 in its location
		finish: func() {
			if t.Failed() {
				log := ngx.ErrorLog()
				t.Logf("nginx error.log (tail):\n%s", log[max(0, len(log)-4000):])
			}
		},
	}
}

// TestBroadcastScale: see the package documentation.
func TestBroadcastScale(t *testing.T) {
	n := envInt(t, "SESSIONPUSH_BENCH_LISTENERS", 200)
	rounds := max(1, envInt(t, "SESSIONPUSH_BENCH_ROUNDS", 3))
	concurrency := envInt(t, "SESSIONPUSH_BENCH_CONCURRENCY", 0)
	relays := os.Getenv("SESSIONPUSH_BENCH_RELAYS")
	if relays == "" {
		relays = "embedded,nchan"
	}
	if n == 0 {
		t.Skip("SESSIONPUSH_BENCH_LISTENERS=0")
	}

	var (
		mu      sync.Mutex
		results []result
	)
	for _, name := range []string{"embedded", "nchan"} {
		if !strings.Contains(relays, name) {
			continue
		}
		t.Run(name, func(t *testing.T) {
			var tg *target
			if name == "embedded" {
				tg = embeddedTarget(t, n)
			} else {
				tg = nchanTarget(t, n)
			}
			if tg.finish != nil {
				t.Cleanup(tg.finish)
			}
			for _, bc := range []bool{false, true} {
				r := runMode(t, tg, bc, n, rounds, concurrency)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	if len(results) > 0 {
		t.Logf("\n%s", table(results, rounds, concurrency))
	}
}

func table(results []result, rounds, concurrency int) string {
	var b strings.Builder
	if concurrency == 0 {
		concurrency = sessionpush.DefaultConcurrency
	}
	fmt.Fprintf(&b, "Broadcast to N listeners, median [min–max] of %d rounds after a warm-up; Config.Concurrency %d\n", rounds, concurrency)
	fmt.Fprintf(&b, "%-9s %-17s %6s %8s %11s %-16s %-28s %-28s\n",
		"relay", "mode", "N", "reached", "relay calls", "HTTP GET+POST", "Broadcast call", "last listener has it")
	base := map[string]result{}
	for _, r := range results {
		if r.mode == "fan-out" {
			base[r.relay] = r
		}
		httpReq := "- (in-process)"
		if r.relay == "nchan" {
			httpReq = fmt.Sprintf("%d+%d", r.get, r.post)
		}
		fmt.Fprintf(&b, "%-9s %-17s %6d %8d %11d %-16s %-28s %-28s\n",
			r.relay, r.mode, r.n, r.reached, r.calls, httpReq, summarize(r.call), summarize(r.last))
	}
	for _, r := range results {
		f, ok := base[r.relay]
		if r.mode == "fan-out" || !ok {
			continue
		}
		ratio := func(a, b []time.Duration) string {
			x, y := summarize(a).med, summarize(b).med
			if y == 0 {
				return "n/a"
			}
			return fmt.Sprintf("%.3g (fan-out/broadcast %.3gx)", float64(x)/float64(y), float64(y)/float64(max(x, 1)))
		}
		fmt.Fprintf(&b, "%s: broadcast channel / fan-out, medians: Broadcast call %s, last listener %s\n",
			r.relay, ratio(r.call, f.call), ratio(r.last, f.last))
	}
	return b.String()
}
