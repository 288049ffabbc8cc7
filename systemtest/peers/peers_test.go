package peers

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

func TestMain(m *testing.M) {
	farm.Main()
	os.Exit(m.Run())
}

// config is the run's settings, from the environment (see the package
// documentation).
type config struct {
	full       bool
	n          int // listeners of each topology
	rounds     int // measured rounds, after one warm-up round
	publishers int // goroutines publishing to the n channels
	only       map[string]bool
	prof       string
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

func loadConfig(t *testing.T) config {
	c := config{full: os.Getenv("SESSIONPUSH_BENCH") == "full", n: 100, rounds: 1, publishers: 4,
		prof: os.Getenv("SESSIONPUSH_BENCH_CPUPROFILE")}
	if c.full {
		c.n, c.rounds = 10000, 5
	}
	c.n = envInt(t, "SESSIONPUSH_BENCH_N", c.n)
	c.rounds = envInt(t, "SESSIONPUSH_BENCH_ROUNDS", c.rounds)
	if s := os.Getenv("SESSIONPUSH_BENCH_ONLY"); s != "" {
		c.only = map[string]bool{}
		for _, r := range strings.Split(s, ",") {
			c.only[strings.TrimSpace(r)] = true
		}
	}
	return c
}

// muxStreams is the EventSource streams per connection of the
// hub-h2-tls-mux row: listeners that share connections, as the tabs of a
// browser on one origin do over HTTP/2 (net/http's server allows 250
// streams per connection).
const muxStreams = 100

// rowDefs are the rows of the table, run in this order.
var rowDefs = []struct {
	name string
	mk   func(t *testing.T, cert tls.Certificate) *server
}{
	{"hub-h1", func(t *testing.T, c tls.Certificate) *server { return hubServer(t, "hub-h1", farm.HTTP1, c) }},
	{"hub-tls-h1", func(t *testing.T, c tls.Certificate) *server { return hubServer(t, "hub-tls-h1", farm.TLS1, c) }},
	{"hub-h2-tls", func(t *testing.T, c tls.Certificate) *server { return hubServer(t, "hub-h2-tls", farm.TLS2, c) }},
	{"hub-h2-tls-mux", func(t *testing.T, c tls.Certificate) *server {
		s := hubServer(t, "hub-h2-tls-mux", farm.TLS2, c)
		s.streams = muxStreams
		return s
	}},
	{"hub-ws-tls", func(t *testing.T, c tls.Certificate) *server { return hubServer(t, "hub-ws-tls", farm.WebSocketTLS, c) }},
	{"centrifuge", func(t *testing.T, _ tls.Certificate) *server { return centrifugeServer(t) }},
	{"mercure", func(t *testing.T, _ tls.Certificate) *server { return mercureServer(t) }},
	{"floor", func(t *testing.T, _ tls.Certificate) *server { return floorServer(t) }},
}

// round is one burst's figures.
type round struct {
	rate float64       // deliveries per second, first publish to last delivery
	p99  time.Duration // send to receive
	cpu  time.Duration // this process's CPU per delivery
	farm time.Duration // the farm's CPU per delivery (10 ms ticks)
}

// result is one row's figures.
type result struct {
	name     string
	idle     float64 // KiB of RSS per idle listener
	heap     float64 // of which KiB of Go heap in use (HeapInuse)
	stack    float64 // and of goroutine stacks (StackInuse)
	channels []round // one message to each of n channels, measured rounds
	one      []round // one message to one channel of n listeners
	cold     round   // the first round of channels: the first message of each channel
}

// TestPeers runs every row (SESSIONPUSH_BENCH_ONLY: some) and prints the
// table; with SESSIONPUSH_BENCH=full, at full size with the targets.
func TestPeers(t *testing.T) {
	cfg := loadConfig(t)
	cert, pem := farm.TestCert(t)
	start := time.Now()
	load0 := loadAvg()
	var results []*result
	for _, d := range rowDefs {
		if cfg.only != nil && !cfg.only[d.name] {
			continue
		}
		t.Run(d.name, func(t *testing.T) {
			res := runRow(t, cfg, d.mk(t, cert), pem)
			if !t.Failed() {
				results = append(results, res)
			}
		})
	}
	if cfg.only != nil && len(results) == 0 && !t.Failed() {
		t.Fatalf("SESSIONPUSH_BENCH_ONLY=%s names no row", os.Getenv("SESSIONPUSH_BENCH_ONLY"))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d listeners per topology, %d measured rounds after a warm-up round; medians [min–max]; GOMAXPROCS %d; load average %s at the start, %s at the end; %s\n\n",
		cfg.n, cfg.rounds, runtime.GOMAXPROCS(0), load0, loadAvg(), time.Since(start).Round(time.Second))
	table(&b, cfg, results)
	if cfg.full {
		targets(&b, cfg, results)
	}
	t.Log(b.String())
}

// runRow measures one server: topology B (one channel, n listeners; the
// idle memory is measured there), then topology A (n channels, one
// listener each).
func runRow(t *testing.T, cfg config, s *server, pem []byte) *result {
	res := &result{name: s.name}
	base := openFDs(t)

	// Topology B.
	ch := "one"
	cur := s.open(ch)
	ls := make([]farm.Listener, cfg.n)
	for i := range ls {
		ls[i] = farm.Listener{Addr: s.addr, Path: s.path(ch), LastEventID: cur}
	}
	before := selfRSS(t)
	f := startFarm(t, s, ls, pem)
	if s.ready != nil {
		if err := s.ready([]string{ch}, cfg.n); err != nil {
			t.Fatal(err)
		}
	}
	after := selfRSS(t)
	per := func(a, b float64) float64 { return (a - b) / float64(cfg.n) / 1024 }
	res.idle, res.heap, res.stack = per(after.RSS, before.RSS), per(after.Heap, before.Heap), per(after.Stack, before.Stack)
	var keys []string
	stop := profile(t, cfg, s.name+"-one")
	for r := range cfg.rounds + 1 {
		key := fmt.Sprintf("%s-one-%d", s.name, r)
		keys = append(keys, key)
		b := burst(t, s, f, []string{ch}, 1, key, cfg.n)
		if r > 0 {
			res.one = append(res.one, b)
		}
	}
	stop()
	done(t, s, f, keys, base)

	// Topology A.
	ids := make([]string, cfg.n)
	ls = make([]farm.Listener, cfg.n)
	for i := range ids {
		ids[i] = "c" + strconv.Itoa(i)
		ls[i] = farm.Listener{Addr: s.addr, Path: s.path(ids[i]), LastEventID: s.open(ids[i])}
	}
	f = startFarm(t, s, ls, pem)
	if s.ready != nil {
		if err := s.ready(ids, 1); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC() // the garbage of connecting is not the rounds'
	keys = nil
	for r := range cfg.rounds + 1 {
		if r == 1 {
			stop = profile(t, cfg, s.name+"-channels")
		}
		key := fmt.Sprintf("%s-channels-%d", s.name, r)
		keys = append(keys, key)
		b := burst(t, s, f, ids, cfg.publishers, key, cfg.n)
		if r == 0 {
			res.cold = b
		} else {
			res.channels = append(res.channels, b)
		}
	}
	stop()
	done(t, s, f, keys, base)
	return res
}

func startFarm(t *testing.T, s *server, ls []farm.Listener, pem []byte) *farm.Farm {
	f, err := farm.New(farm.Options{Listeners: ls, Transport: s.transport, RootCAs: pem, StampedOnly: s.stamped, StreamsPerConn: s.streams})
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// done checks that every listener got each of keys once and nothing else,
// and that no connection failed; then closes the farm and waits until the
// server has let go of its connections.
func done(t *testing.T, s *server, f *farm.Farm, keys []string, base int) {
	t.Helper()
	if v, err := f.Check(keys, 300*time.Millisecond); err != nil || v != "" {
		t.Errorf("%s: %s %v", s.name, v, err)
	}
	if c, err := f.Counters(); err != nil || c.Errors != 0 || c.Disconnects != 0 {
		t.Errorf("%s: listener farm: %+v %v", s.name, c, err)
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}
	if s.drop != nil {
		s.drop()
	}
	// The next farm needs the descriptors: RLIMIT_NOFILE is 20,000 here.
	deadline := time.Now().Add(time.Minute)
	for openFDs(t) > base+64 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d descriptors open a minute after the farm closed, %d before it", s.name, openFDs(t), base)
		}
		time.Sleep(20 * time.Millisecond) // polling the process's descriptors
	}
}

// burst publishes one message, stamped with the burst's start, to each of
// ids (one ID: one message) from p goroutines, and waits for n deliveries
// of key.
func burst(t *testing.T, s *server, f *farm.Farm, ids []string, p int, key string, n int) round {
	t.Helper()
	cpu0, farm0 := selfCPU(), procCPU(f.PID())
	start := time.Now()
	body := farm.Body(key, start, 0)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Value
	)
	for range min(p, len(ids)) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(ids)) {
					return
				}
				if err := s.publish(ids[i], body); err != nil {
					fail.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := fail.Load().(error); err != nil {
		t.Fatalf("%s: publish: %v", s.name, err)
	}
	st, err := f.Wait(key, n, 2*time.Minute)
	if err != nil {
		v, _ := f.Check([]string{key}, 0)
		t.Fatalf("%s %s: %v (%d of %d deliveries): %s", s.name, key, err, st.Count, n, v)
	}
	cpu, fcpu := selfCPU()-cpu0, procCPU(f.PID())-farm0
	return round{rate: float64(n) / st.Last.Sub(start).Seconds(), p99: st.P99,
		cpu: cpu / time.Duration(n), farm: fcpu / time.Duration(n)}
}

// profile starts a CPU profile of name if SESSIONPUSH_BENCH_CPUPROFILE is
// set; the function returned stops it.
func profile(t *testing.T, cfg config, name string) func() {
	if cfg.prof == "" {
		return func() {}
	}
	if err := os.MkdirAll(cfg.prof, 0o755); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Create(filepath.Join(cfg.prof, name+".pprof"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(fh); err != nil {
		t.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		fh.Close()
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// memory is this process's memory in bytes.
type memory = servers.Memory

// procCPU is the user and system CPU time of process pid, all its
// threads; 0 if unknown.
func procCPU(pid int) time.Duration {
	d, _ := servers.ProcCPU(pid)
	return d
}

// selfRSS is this process's memory, after a collection that returns freed
// memory to the system.
func selfRSS(t *testing.T) memory {
	m, err := servers.SelfMemory()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func openFDs(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// stat is the median, min and max of a figure over rounds.
type stat struct{ med, lo, hi float64 }

func stats(rs []round, v func(round) float64) stat {
	if len(rs) == 0 {
		return stat{}
	}
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = v(r)
	}
	slices.Sort(xs)
	med := xs[len(xs)/2]
	if len(xs)%2 == 0 {
		med = (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return stat{med, xs[0], xs[len(xs)-1]}
}

func (s stat) String() string {
	f := func(x float64) string {
		switch {
		case x >= 1000:
			return strconv.FormatFloat(x, 'f', 0, 64)
		case x >= 10:
			return strconv.FormatFloat(x, 'f', 1, 64)
		}
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	if s.lo == s.hi {
		return f(s.med)
	}
	return fmt.Sprintf("%s [%s–%s]", f(s.med), f(s.lo), f(s.hi))
}

var (
	rate = func(r round) float64 { return r.rate }
	p99  = func(r round) float64 { return float64(r.p99) / 1e6 }
	cpu  = func(r round) float64 { return float64(r.cpu) / 1e3 }
	fcpu = func(r round) float64 { return float64(r.farm) / 1e3 }
)

func table(b *strings.Builder, cfg config, rs []*result) {
	fmt.Fprintf(b, "| row | idle KiB per listener (heap, stacks) | %d channels: deliveries/s | p99 ms | server CPU µs per delivery | farm CPU µs | one channel, %d listeners: deliveries/s | p99 ms | server CPU µs per delivery | farm CPU µs | first round of %d channels: deliveries/s |\n", cfg.n, cfg.n, cfg.n)
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(b, "| %s | %.1f (%.1f, %.1f) | %v | %v | %v | %.1f | %v | %v | %v | %.1f | %.0f |\n", r.name, r.idle, r.heap, r.stack,
			stats(r.channels, rate), stats(r.channels, p99), stats(r.channels, cpu), stats(r.channels, fcpu).med,
			stats(r.one, rate), stats(r.one, p99), stats(r.one, cpu), stats(r.one, fcpu).med, r.cold.rate)
	}
}

// targets prints the targets, as ratios of medians in this run.
func targets(b *strings.Builder, cfg config, rs []*result) {
	by := map[string]*result{}
	for _, r := range rs {
		by[r.name] = r
	}
	b.WriteString("\n| target | figure | met |\n|---|---|---|\n")
	ratio := func(what, target string, a, z string, pick func(*result) float64, ok func(float64) bool) {
		ra, rz := by[a], by[z]
		if ra == nil || rz == nil {
			return
		}
		x := pick(ra) / pick(rz)
		mark := "❌"
		if ok(x) {
			mark = "✅"
		}
		fmt.Fprintf(b, "| %s: %s ÷ %s %s | %.2f× | %s |\n", what, a, z, target, x, mark)
	}
	chRate := func(r *result) float64 { return stats(r.channels, rate).med }
	chCPU := func(r *result) float64 { return stats(r.channels, cpu).med }
	oneRate := func(r *result) float64 { return stats(r.one, rate).med }
	idle := func(r *result) float64 { return r.idle }
	ge := func(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }
	le := func(x float64) func(float64) bool { return func(v float64) bool { return v <= x } }
	chs := fmt.Sprintf("%d channels", cfg.n)
	one := fmt.Sprintf("one channel, %d listeners", cfg.n)
	ratio(chs+", deliveries/s", "≥ 1.5×", "hub-h1", "centrifuge", chRate, ge(1.5))
	ratio(chs+", CPU per delivery", "≤ 0.6×", "hub-h1", "centrifuge", chCPU, le(0.6))
	ratio(chs+", CPU per delivery", "≤ 1.6×", "hub-h1", "floor", chCPU, le(1.6))
	ratio(one+", deliveries/s", "≥ 2×", "hub-h1", "centrifuge", oneRate, ge(2))
	ratio(one+", deliveries/s", "≥ 1.5×", "hub-h1", "mercure", oneRate, ge(1.5))
	ratio("idle memory per listener", "≤ 0.2×", "hub-h1", "centrifuge", idle, le(0.2))
	ratio("idle memory per listener", "≤ 0.2×", "hub-h1", "mercure", idle, le(0.2))
	ratio(chs+", deliveries/s", "≥ 0.6×", "hub-h2-tls", "hub-h1", chRate, ge(0.6))
	ratio(one+", deliveries/s", "≥ 0.6×", "hub-h2-tls", "hub-h1", oneRate, ge(0.6))
	ratio(chs+", deliveries/s", "≥ 0.6×", "hub-h2-tls-mux", "hub-h1", chRate, ge(0.6))
	ratio(one+", deliveries/s", "≥ 0.6×", "hub-h2-tls-mux", "hub-h1", oneRate, ge(0.6))
	ratio(chs+", deliveries/s", "≥ 0.7×", "hub-tls-h1", "hub-h1", chRate, ge(0.7))
	ratio(one+", deliveries/s", "≥ 0.7×", "hub-tls-h1", "hub-h1", oneRate, ge(0.7))
	for _, name := range []string{"hub-h2-tls", "hub-h2-tls-mux"} {
		if r := by[name]; r != nil {
			mark := "❌"
			if r.idle <= 16 {
				mark = "✅"
			}
			fmt.Fprintf(b, "| idle memory per EventSource listener over HTTP/2 with TLS: %s ≤ 16 KiB | %.1f KiB | %s |\n", name, r.idle, mark)
		}
	}
}
