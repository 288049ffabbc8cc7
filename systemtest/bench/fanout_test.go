package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// side is one relay of figures 3 to 5 with its listener farm.
type side struct {
	name    string
	rel     relay.Relay    // the raw relay: hub.Hub or nchan.Client
	counter *countingRelay // around rel, for the Manager
	nchan   *nchan.Client  // nchan only
	sent    uint64         // its HTTP requests at the last reset
	addr    string         // host:port of the subscriber endpoint
	cpu     func() (time.Duration, error)
	pid     int // the nginx worker (nchan only)
	f       *farm.Farm
	keys    []string // every key published to this side's farm
}

// requests is what the relay was asked since the last reset: HTTP
// requests for Nchan, relay calls for the embedded hub.
func (s *side) requests() int64 {
	if s.nchan != nil {
		return int64(httpRequests(s.nchan) - s.sent)
	}
	return s.counter.calls()
}

func (s *side) reset() {
	s.counter.reset()
	if s.nchan != nil {
		s.sent = httpRequests(s.nchan)
	}
}

// httpRequests is every HTTP request c has sent, retries included.
func httpRequests(c *nchan.Client) uint64 {
	r := c.Stats().Requests
	return r.Get + r.Post + r.Put + r.Delete
}

// serveHub serves h's listeners under /sub/{channel} over real TCP.
func serveHub(t *testing.T, h *hub.Hub) string {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, r.PathValue("channel"))
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
	return srv.Listener.Addr().String()
}

func embeddedSide(t *testing.T) (*side, *hub.Hub) {
	h := hub.New(hub.Options{Logger: slog.New(slog.DiscardHandler)})
	addr := serveHub(t, h)
	return &side{name: "embedded", rel: h, counter: &countingRelay{Relay: h}, addr: addr,
		cpu: func() (time.Duration, error) { return selfCPU(), nil }}, h
}

func nchanSide(t *testing.T, n int) *side {
	ngx := startNchan(t, n)
	worker := ngx.WorkerPID()
	// ExistsTTL of an hour: Publish sends only its POST to the channels
	// that Open created, so Nchan is measured at one request per message.
	client, err := nchan.New(ngx.URL+"/pub/{channel}", nchan.Options{
		Logger:    slog.New(slog.DiscardHandler),
		ExistsTTL: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections) // before nginx's graceful stop
	return &side{name: "nchan", rel: client, counter: &countingRelay{Relay: client}, nchan: client, addr: ngx.Addr, pid: worker,
		cpu: func() (time.Duration, error) { return procCPU(worker) }}
}

// burst is one round of figure 3 on one side.
type burst struct {
	rate           float64       // deliveries per second
	elapsed        time.Duration // first publish to last delivery
	p50, p99       time.Duration
	cpuPerDelivery time.Duration
}

// publishBurst publishes one message to each of ids (one ID may repeat:
// the broadcast channel) from p goroutines, each message stamped with its
// intended send time, and waits for n deliveries of key. With pace > 0 the i-th
// message is sent no earlier than i/pace seconds after the first.
func publishBurst(t *testing.T, s *side, ids []string, p int, key string, n int, pace float64) burst {
	s.keys = append(s.keys, key)
	cpu0, err := s.cpu()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	publishAll(t, s.name, len(ids), p, func(i int) error {
		// The intended send time: the burst's start, or the message's
		// slot in the paced schedule. Latency counts from it (as wrk2
		// does, against coordinated omission), so a message that waits
		// for a free publisher, in this process or in a relay's HTTP
		// round trip, counts the wait.
		intended := start
		if pace > 0 {
			intended = start.Add(time.Duration(float64(i) / pace * float64(time.Second)))
			// Pacing, not synchronisation: the send schedule.
			time.Sleep(time.Until(intended))
		}
		m := relay.Message{Body: farm.Body(key, intended, 0), ContentType: "application/json"}
		_, err := s.rel.Publish(ctx, ids[i], m)
		return err
	})
	return awaitBurst(t, s.name, s.f, s.keys, key, n, start, s.cpu, cpu0)
}

// publishAll calls send(i) for each i in [0, n) from p goroutines, and fails
// the test, naming who, at the first error.
func publishAll(t *testing.T, who string, n, p int, send func(i int) error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Value
	)
	for range min(p, n) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := send(int(i)); err != nil {
					fail.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := fail.Load().(error); err != nil {
		t.Fatalf("%s: publish: %v", who, err)
	}
}

// awaitBurst waits for n deliveries of key on f and returns the round from
// start, with the CPU per delivery that cpu counted since cpu0; keys are
// every key published to f, for the report of a failure.
func awaitBurst(t *testing.T, who string, f *farm.Farm, keys []string, key string, n int, start time.Time,
	cpu func() (time.Duration, error), cpu0 time.Duration) burst {
	st, err := f.Wait(key, n, 2*time.Minute)
	if err != nil {
		v, _ := f.Check(keys, 0)
		t.Fatalf("%s %s: %v (%d of %d deliveries): %s", who, key, err, st.Count, n, v)
	}
	cpu1, err := cpu()
	if err != nil {
		t.Fatal(err)
	}
	el := st.Last.Sub(start)
	return burst{rate: float64(n) / el.Seconds(), elapsed: el, p50: st.P50, p99: st.P99,
		cpuPerDelivery: (cpu1 - cpu0) / time.Duration(n)}
}

// broadcastRound calls mgr.Broadcast once and returns the relay requests it
// made and the time from the call to the last of n deliveries.
func broadcastRound(t *testing.T, s *side, mgr *sessionpush.Manager, key string, n int) (int64, time.Duration) {
	s.keys = append(s.keys, key)
	s.reset()
	start := time.Now()
	reached, err := mgr.Broadcast(context.Background(), farm.NewStamp(key))
	if err != nil {
		t.Fatalf("%s: Broadcast: %v", s.name, err)
	}
	if reached.Listeners != n {
		t.Errorf("%s: Broadcast %s reached %+v, want %d listeners", s.name, key, reached, n)
	}
	st, err := s.f.Wait(key, n, 2*time.Minute)
	if err != nil {
		v, _ := s.f.Check(s.keys, 0)
		t.Fatalf("%s %s: %v (%d of %d deliveries): %s", s.name, key, err, st.Count, n, v)
	}
	return s.requests(), st.Last.Sub(start)
}

// memory is a process's memory at one moment, in bytes.
type memory = servers.Memory

func selfMemory(t *testing.T) memory {
	m, err := servers.SelfMemory()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func workerRSS(t *testing.T, pid int) float64 {
	kb, err := servers.ProcStatus(strconv.Itoa(pid), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	return float64(kb) * 1024
}

// newManager is a Manager on s's counting relay with the given channels
// in its store.
func newManager(t *testing.T, s *side, ids []string, broadcastChannel string) *sessionpush.Manager {
	store := sessionpush.NewMemoryStore()
	now := time.Now()
	for i, id := range ids {
		if err := store.Add(context.Background(), sessionpush.Record{ID: id, User: "u" + strconv.Itoa(i), Opened: now, LastSeen: now}); err != nil {
			t.Fatal(err)
		}
	}
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions:         sessions.NewCookieStore(securecookie.GenerateRandomKey(32)),
		Relay:            s.counter,
		Store:            store,
		BroadcastChannel: broadcastChannel,
		Logger:           slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return mgr
}

func finish(t *testing.T, s *side) {
	if v, err := s.f.Check(s.keys, 300*time.Millisecond); err != nil || v != "" {
		t.Errorf("%s: %s %v", s.name, v, err)
	}
	c, err := s.f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Errors != 0 || c.Disconnects != 0 {
		t.Errorf("%s: listener farm: %+v", s.name, c)
	}
	if err := s.f.Close(); err != nil {
		t.Error(err)
	}
}

func ms(d []time.Duration) []float64 {
	v := make([]float64, len(d))
	for i, x := range d {
		v[i] = float64(x) / float64(time.Millisecond)
	}
	return v
}

// fanoutFigures: figures 3 (fan-out), 4 (idle listeners) and 5 (broadcast)
// on both relays, the embedded one served by this process and Nchan by
// nginx, each with a farm of N listeners. Rounds alternate between the
// relays, which are both up with their listeners connected.
func fanoutFigures(t *testing.T, cfg suiteConfig, out *rows) {
	n := cfg.listeners
	nc := nchanSide(t, n)
	worker := nc.pid
	// Figure 5's fan-out measurements, from topology A to topology B,
	// where the rows are made.
	var broadcastFanout struct {
		req  map[string][]float64
		last map[string][]time.Duration
	}

	// Topology A: N open channels, one listener each.
	t.Run("channels", func(t *testing.T) {
		em, _ := embeddedSide(t)
		ids := make([]string, n)
		for i := range ids {
			ids[i] = uuid.NewString()
		}
		ncCursors := openAll(t, nc.rel, ids)
		emCursors := openAll(t, em.rel, ids)
		listeners := func(addr string, cursors []string) []farm.Listener {
			ls := make([]farm.Listener, n)
			for i, id := range ids {
				ls[i] = farm.Listener{Addr: addr, Path: "/sub/" + id, LastEventID: cursors[i]}
			}
			return ls
		}

		// Figure 4: memory per idle listener.
		before := selfMemory(t)
		em.f = farm.Start(t, farm.Options{Listeners: listeners(em.addr, emCursors)})
		after := selfMemory(t)
		ngxBefore := workerRSS(t, worker)
		nc.f = farm.Start(t, farm.Options{Listeners: listeners(nc.addr, ncCursors)})
		ngxAfter := workerRSS(t, worker)
		per := func(a, b float64) []float64 { return []float64{(a - b) / float64(n) / 1024} }
		out.add(row{fig: "4", measure: fmt.Sprintf("memory per idle EventSource listener at %d", n), note: "process RSS growth",
			subject: "embedded", base: "nginx worker", unit: "KiB", subj: per(after.RSS, before.RSS), baseV: per(ngxAfter, ngxBefore),
			target: "embedded ≤ 16 KiB", holds: func(s, _, _ float64) bool { return s <= 16 }})
		out.add(row{fig: "4", measure: "of which Go heap (HeapInuse)", subject: "embedded", unit: "KiB",
			subj: per(after.Heap, before.Heap)})
		out.add(row{fig: "4", measure: "of which goroutine stacks (StackInuse)", subject: "embedded", unit: "KiB",
			subj: per(after.Stack, before.Stack)})

		// Figure 3: one message to each of the N channels.
		var e, g []burst
		for r := range cfg.runs + 1 { // round 0 warms up
			order := []*side{em, nc}
			if r%2 == 1 {
				order = []*side{nc, em}
			}
			var be, bg burst
			for _, s := range order {
				b := publishBurst(t, s, ids, cfg.publishP, fmt.Sprintf("fanout-%s-%d", s.name, r), n, 0)
				if s == em {
					be = b
				} else {
					bg = b
				}
			}
			if r > 0 {
				e, g = append(e, be), append(g, bg)
			}
		}
		addBurstRows(out, fmt.Sprintf("one message to each of %d channels", n), e, g, 2)

		// The same, paced below both relays' capacity, so that the
		// latency is the relay's and not the queue of a burst.
		e, g = nil, nil
		for r := range cfg.runs {
			order := []*side{em, nc}
			if r%2 == 1 {
				order = []*side{nc, em}
			}
			var be, bg burst
			for _, s := range order {
				b := publishBurst(t, s, ids, cfg.publishP, fmt.Sprintf("paced-%s-%d", s.name, r), n, cfg.pace)
				if s == em {
					be = b
				} else {
					bg = b
				}
			}
			e, g = append(e, be), append(g, bg)
		}
		paced := fmt.Sprintf("one message to each of %d channels, paced at %.0f/s", n, cfg.pace)
		for _, x := range []struct {
			what   string
			v      func(burst) float64
			target string
			holds  func(s, b, r float64) bool
		}{
			{"latency p50", func(b burst) float64 { return float64(b.p50) / 1e6 }, "", nil},
			{"latency p99", func(b burst) float64 { return float64(b.p99) / 1e6 }, "≤ 1×", func(_, _, r float64) bool { return r <= 1 }},
			{"server CPU per delivery", func(b burst) float64 { return float64(b.cpuPerDelivery) / 1e3 }, "", nil},
		} {
			out.add(row{fig: "3", measure: paced + ": " + x.what, subject: "embedded", base: "nchan",
				unit: map[bool]string{true: "µs", false: "ms"}[strings.Contains(x.what, "CPU")],
				subj: burstValues(e, x.v), baseV: burstValues(g, x.v), target: x.target, holds: x.holds})
		}

		// Figure 5, per-channel fan-out: Manager.Broadcast to the N
		// channels in its store.
		fanReq, fanLast := map[string][]float64{}, map[string][]time.Duration{}
		mgrs := map[*side]*sessionpush.Manager{em: newManager(t, em, ids, ""), nc: newManager(t, nc, ids, "")}
		for r := range cfg.runs + 1 {
			for _, s := range []*side{em, nc} {
				req, last := broadcastRound(t, s, mgrs[s], fmt.Sprintf("broadcast-fanout-%s-%d", s.name, r), n)
				if req != int64(n) {
					t.Errorf("%s: a per-channel Broadcast to %d channels made %d requests to the relay, want one each", s.name, n, req)
				}
				if r > 0 {
					fanReq[s.name] = append(fanReq[s.name], float64(req))
					fanLast[s.name] = append(fanLast[s.name], last)
				}
			}
		}
		finish(t, em)
		finish(t, nc)
		// Close the channels, so that topology B starts clean.
		closeAll(t, nc.rel, ids)
		broadcastFanout = struct {
			req  map[string][]float64
			last map[string][]time.Duration
		}{fanReq, fanLast}
	})
	if t.Failed() {
		return
	}

	// Topology B: N listeners on the broadcast channel.
	t.Run("one-channel", func(t *testing.T) {
		em, h := embeddedSide(t)
		ncCursor := openAll(t, nc.rel, []string{broadcastID})[0]
		emCursor := openAll(t, em.rel, []string{broadcastID})[0]
		if err := h.SetMaxListeners(broadcastID, -1); err != nil {
			t.Fatal(err)
		}
		listeners := func(addr, cursor string) []farm.Listener {
			ls := make([]farm.Listener, n)
			for i := range ls {
				ls[i] = farm.Listener{Addr: addr, Path: "/sub/" + broadcastID, LastEventID: cursor}
			}
			return ls
		}
		em.f = farm.Start(t, farm.Options{Listeners: listeners(em.addr, emCursor)})
		nc.f = farm.Start(t, farm.Options{Listeners: listeners(nc.addr, ncCursor)})
		nc.keys = nil
		// Broadcast's count is the subscribers that the relay reports:
		// wait until both report all N.
		waitSubscribers(t, em.rel, broadcastID, n)
		waitSubscribers(t, nc.rel, broadcastID, n)

		// Figure 3, variant: one message to one channel of N listeners.
		var e, g []burst
		one := []string{broadcastID}
		for r := range cfg.runs + 1 {
			order := []*side{em, nc}
			if r%2 == 1 {
				order = []*side{nc, em}
			}
			var be, bg burst
			for _, s := range order {
				b := publishBurst(t, s, one, 1, fmt.Sprintf("one-%s-%d", s.name, r), n, 0)
				if s == em {
					be = b
				} else {
					bg = b
				}
			}
			if r > 0 {
				e, g = append(e, be), append(g, bg)
			}
		}
		addBurstRows(out, fmt.Sprintf("one message to one channel of %d listeners", n), e, g, 1.3)

		// Figure 5, broadcast channel: Manager.Broadcast with
		// Config.BroadcastChannel.
		mgrs := map[*side]*sessionpush.Manager{em: newManager(t, em, nil, broadcastID), nc: newManager(t, nc, nil, broadcastID)}
		for _, s := range []*side{em, nc} {
			var reqs []float64
			var lasts []time.Duration
			for r := range cfg.runs + 1 {
				req, last := broadcastRound(t, s, mgrs[s], fmt.Sprintf("broadcast-channel-%s-%d", s.name, r), n)
				if req != 1 {
					t.Errorf("%s: Broadcast on the broadcast channel made %d requests to the relay, want 1", s.name, req)
				}
				if r > 0 {
					reqs, lasts = append(reqs, float64(req)), append(lasts, last)
				}
			}
			what := "relay calls"
			if s.nchan != nil {
				what = "HTTP requests"
			}
			out.add(row{fig: "5", measure: fmt.Sprintf("Broadcast to %d listeners: requests to the relay", n), note: what,
				subject: s.name + " broadcast channel", base: s.name + " per-channel fan-out", unit: "requests",
				subj: reqs, baseV: broadcastFanout.req[s.name],
				target: "1 (broadcast channel)", holds: func(s, _, _ float64) bool { return s == 1 }})
			out.add(row{fig: "5", measure: fmt.Sprintf("Broadcast to %d listeners: call to last delivery", n),
				subject: s.name + " broadcast channel", base: s.name + " per-channel fan-out", unit: "ms",
				subj: ms(lasts), baseV: ms(broadcastFanout.last[s.name]),
				target: "≤ 200 ms (broadcast channel)", holds: func(s, _, _ float64) bool { return s <= 200 }})
		}
		finish(t, em)
		finish(t, nc)
	})
}

func burstValues(bs []burst, v func(burst) float64) []float64 {
	r := make([]float64, len(bs))
	for i, b := range bs {
		r[i] = v(b)
	}
	return r
}

func addBurstRows(out *rows, what string, e, g []burst, rateTarget float64) {
	f := burstValues
	base := row{fig: "3", subject: "embedded", base: "nchan"}
	add := func(measure, unit string, v func(burst) float64, target string, holds func(s, b, r float64) bool) {
		x := base
		x.measure, x.unit, x.subj, x.baseV, x.target, x.holds = what+": "+measure, unit, f(e, v), f(g, v), target, holds
		out.add(x)
	}
	add("deliveries/s", "1/s", func(b burst) float64 { return b.rate },
		fmt.Sprintf("≥ %.3g×", rateTarget), func(_, _, r float64) bool { return r >= rateTarget })
	add("first publish to last delivery", "ms", func(b burst) float64 { return float64(b.elapsed) / 1e6 }, "", nil)
	add("latency p50", "ms", func(b burst) float64 { return float64(b.p50) / 1e6 }, "", nil)
	add("latency p99", "ms", func(b burst) float64 { return float64(b.p99) / 1e6 },
		"≤ 1×", func(_, _, r float64) bool { return r <= 1 })
	add("server CPU per delivery", "µs", func(b burst) float64 { return float64(b.cpuPerDelivery) / 1e3 },
		"≤ 0.8×", func(_, _, r float64) bool { return r <= 0.8 })
}

// closeAll closes ids on rel, 32 at a time.
func closeAll(t *testing.T, rel relay.Relay, ids []string) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rel.Close(context.Background(), id)
		})
	}
	wg.Wait()
}

// waitSubscribers polls rel until channel reports n listeners, for at most
// a minute.
func waitSubscribers(t *testing.T, rel relay.Relay, channel string, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := rel.Info(context.Background(), channel)
		if err == nil && info.Listeners == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("channel %s: %d listeners (err %v), want %d", channel, info.Listeners, err, n)
		}
		time.Sleep(20 * time.Millisecond) // polling the relay's count
	}
}
