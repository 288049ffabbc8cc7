package bench

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/redishub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// Figure 6: redishub on two application instances against Nchan + Redis on
// two nginx nodes (the shipped example/nginx/cluster configs), and
// redishub's idle listeners against the single-instance embedded relay's.

// roundTrips counts the commands a go-redis client sends: each one outside
// a pipeline is one round trip; a pipeline is one round trip for all of its
// commands.
type roundTrips struct {
	single, pipelines, pipelined atomic.Int64
}

func (c *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.single.Add(1)
		return next(ctx, cmd)
	}
}

func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.pipelines.Add(1)
		c.pipelined.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// listenServer serves serve's listeners under /sub/{channel} over real TCP;
// the caller closes srv (after ending the listeners).
func listenServer(serve func(http.ResponseWriter, *http.Request, string)) (addr string, srv *httptest.Server) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, r.PathValue("channel"))
	})
	srv = httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = nil
	srv.Start()
	return srv.Listener.Addr().String(), srv
}

// rhInstance is one application instance running redishub: its own Redis
// client (counted), its Relay and its listeners' HTTP server.
type rhInstance struct {
	rel    *redishub.Relay
	client *redis.Client
	rt     *roundTrips
	addr   string
	srv    *httptest.Server
	once   sync.Once
}

func startRedishub(t *testing.T, addr, prefix string) *rhInstance {
	client := redis.NewClient(&redis.Options{Addr: addr})
	in := &rhInstance{client: client, rt: &roundTrips{}}
	client.AddHook(in.rt)
	rel, err := redishub.New(client, redishub.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	in.rel = rel
	in.addr, in.srv = listenServer(rel.ServeListener)
	t.Cleanup(in.stop)
	return in
}

// stop ends the instance's listeners and goroutines, once.
func (in *rhInstance) stop() {
	in.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = in.rel.Shutdown(ctx)
		in.srv.Close()
		in.client.Close()
		// The test's cleanup holds in until the end: let the Relay (its
		// replicas among it) go, or the next heap profile counts it.
		in.rel, in.srv, in.client = nil, nil, nil
	})
}

// redisInfo returns the fields of Redis's INFO section.
func redisInfo(t *testing.T, c *redis.Client, section string) map[string]string {
	s, err := c.Info(context.Background(), section).Result()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// redisCalls are Redis's command counts (INFO commandstats), INFO itself
// left out: every command, those that scripts call included, and the
// script calls (EVAL, EVALSHA) among them.
type redisCalls struct{ all, scripts int64 }

func commandCalls(t *testing.T, c *redis.Client) redisCalls {
	var rc redisCalls
	for k, v := range redisInfo(t, c, "commandstats") {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok || name == "info" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			t.Fatalf("INFO commandstats %s: %q", k, v)
		}
		rc.all += n
		if strings.HasPrefix(name, "eval") {
			rc.scripts += n
		}
	}
	return rc
}

func redisPID(t *testing.T, c *redis.Client) int {
	pid, err := strconv.Atoi(redisInfo(t, c, "server")["process_id"])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// clusterNode is the n-th node of the shipped cluster configs and what its
// addresses are there.
var clusterNodes = []struct{ file, listen, publisher, app string }{
	{"node1.conf", "127.0.0.1:8081", "127.0.0.1:8091", "127.0.0.1:8080"},
	{"node2.conf", "127.0.0.1:8083", "127.0.0.1:8093", "127.0.0.1:8082"},
}

const clusterRedis = "127.0.0.1:6379"

// clusterNodeConf returns example/nginx/cluster/node<i+1>.conf as a
// template for servers.StartNginxWith, its addresses (and nothing else)
// replaced: nginx on {{.Addr}}, the publisher server on {{port "pub"}}, the
// application on {{port "app"}}, Redis at {{.Redis}}.
func clusterNodeConf(t *testing.T, i int) string {
	n := clusterNodes[i]
	path := filepath.Join("..", "..", "example", "nginx", "cluster", n.file)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, s := range []string{"listen " + n.listen + ";", "listen " + n.publisher + ";", "server " + n.app + ";", "redis://" + clusterRedis + ";"} {
		if !strings.Contains(conf, s) {
			t.Fatalf("%s: no %q to replace", path, s)
		}
	}
	if strings.Contains(conf, "{{") {
		t.Fatalf("%s: has {{; the test renders it as a template", path)
	}
	conf = strings.ReplaceAll(conf, n.listen, "{{.Addr}}")
	conf = strings.ReplaceAll(conf, n.publisher, `127.0.0.1:{{port "pub"}}`)
	conf = strings.ReplaceAll(conf, n.app, `127.0.0.1:{{port "app"}}`)
	return strings.ReplaceAll(conf, clusterRedis, "{{.Redis}}")
}

// nchanNode is one nginx + Nchan node of the cluster config, with the
// application's /authorize behind it (letting every listener in: the
// benchmark has no sessions) and an nchan.Client on its publisher server.
type nchanNode struct {
	ngx    *servers.Nginx
	client *nchan.Client
	worker int
}

func startNchanNode(t *testing.T, i int, redisAddr string) *nchanNode {
	ngx := servers.StartNginxWith(t, clusterNodeConf(t, i), servers.NginxOptions{
		Vars:      map[string]any{"Redis": redisAddr},
		ReadyPath: "/sub/" + uuid.NewString(), // 404 or 403 once nginx answers
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ngx.Ports["app"]))
	if err != nil {
		t.Fatal(err)
	}
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/authorize" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		http.NotFound(w, r)
	}))
	app.Listener.Close()
	app.Listener = ln
	app.Config.ErrorLog = nil
	app.Start()
	t.Cleanup(app.Close)
	pub := fmt.Sprintf("http://127.0.0.1:%d", ngx.Ports["pub"])
	waitNchanRedis(t, pub)
	client, err := nchan.New(pub+"/pub/{channel}", nchan.Options{
		Logger:    slog.New(slog.DiscardHandler),
		ExistsTTL: time.Hour, // one POST per message, as in figure 3
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections) // before nginx's graceful stop
	t.Cleanup(func() {
		if t.Failed() {
			log := ngx.ErrorLog()
			t.Logf("nginx %s error.log (tail):\n%s", clusterNodes[i].file, log[max(0, len(log)-4000):])
		}
	})
	return &nchanNode{ngx: ngx, client: client, worker: ngx.WorkerPID()}
}

// waitNchanRedis waits until Nchan has its Redis: the publisher server
// answers a channel never opened with 503 before, 404 after.
func waitNchanRedis(t *testing.T, pub string) {
	u := pub + "/pub/" + uuid.NewString()
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Nchan at %s without Redis after 10 s (%v)", pub, err)
		}
		<-tick.C // polling nginx's state
	}
}

// fleet is one side of figure 6's fan-out: two instances or nodes, each
// with half the listeners, and one Redis.
type fleet struct {
	name    string
	publish func(ctx context.Context, i int, m relay.Message) error // message to channel i
	cpu     func() (time.Duration, error)                           // the servers' CPU but Redis
	rdb     *redis.Client                                           // Redis, for INFO
	redis   int                                                     // redis-server's PID
	trips   func() int64                                            // round trips to Redis outside pipelines; nil: unknown
	f       *farm.Farm
	keys    []string
}

// fleetBurst is one round of figure 6 on one side.
type fleetBurst struct {
	burst
	redisCPU        time.Duration // per delivery
	calls, scripts  float64       // Redis commands per message
	tripsPerMessage float64       // round trips to Redis per message; negative: unknown
}

// fleetRound publishes one message to each of the n channels from p
// goroutines and waits for their n deliveries.
func fleetRound(t *testing.T, s *fleet, n, p int, key string) fleetBurst {
	s.keys = append(s.keys, key)
	calls0 := commandCalls(t, s.rdb)
	rcpu0, err := servers.ProcCPU(s.redis)
	if err != nil {
		t.Fatal(err)
	}
	cpu0, err := s.cpu()
	if err != nil {
		t.Fatal(err)
	}
	var trips0 int64
	if s.trips != nil {
		trips0 = s.trips()
	}
	start := time.Now()
	publishAll(t, s.name, n, p, func(i int) error {
		return s.publish(context.Background(), i, relay.Message{Body: farm.Body(key, start, 0), ContentType: "application/json"})
	})
	b := fleetBurst{tripsPerMessage: -1}
	b.burst = awaitBurst(t, s.name, s.f, s.keys, key, n, start, s.cpu, cpu0)
	rcpu1, err := servers.ProcCPU(s.redis)
	if err != nil {
		t.Fatal(err)
	}
	calls1 := commandCalls(t, s.rdb)
	b.redisCPU = (rcpu1 - rcpu0) / time.Duration(n)
	b.calls = float64(calls1.all-calls0.all) / float64(n)
	b.scripts = float64(calls1.scripts-calls0.scripts) / float64(n)
	if s.trips != nil {
		b.tripsPerMessage = float64(s.trips()-trips0) / float64(n)
	}
	return b
}

// heapProfile writes the heap profile to $SESSIONPUSH_BENCH_HEAPPROFILE/name
// if that is set.
func heapProfile(t *testing.T, name string) {
	dir := os.Getenv("SESSIONPUSH_BENCH_HEAPPROFILE")
	if dir == "" {
		return
	}
	runtime.GC()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("heap profile: %s", f.Name())
}

// redishubFigures: figure 6. Two application instances running redishub
// on one redis-server, and two nginx + Nchan nodes (the shipped cluster
// configs) on another, each with N listeners, half on each instance or
// node, one per channel: channel i listens on instance i mod 2 and is
// published to through instance ⌊i/2⌋ mod 2, so that half the messages
// cross instances. And the memory of redishub's idle listeners against the
// single-instance embedded relay's, N each, in turns.
func redishubFigures(t *testing.T, cfg suiteConfig, out *rows) {
	servers.Require(t, "redis-server")
	servers.Require(t, "nginx")
	servers.Require(t, servers.NchanModule)
	if os.Getenv("SESSIONPUSH_BENCH_HEAPPROFILE") != "" {
		old := runtime.MemProfileRate
		runtime.MemProfileRate = 4096
		t.Cleanup(func() { runtime.MemProfileRate = old })
	}
	n := cfg.listeners
	ids := make([]string, n)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	rdA := servers.StartRedis(t) // redishub's
	rdB := servers.StartRedis(t) // Nchan's
	admin := func(r *servers.Redis) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: r.Addr})
		t.Cleanup(func() { c.Close() })
		return c
	}
	adminA, adminB := admin(rdA), admin(rdB)

	// Memory per idle listener, in turns: the embedded relay (one hub, N
	// channels opened, N listeners) and redishub (two fresh instances, N
	// channels opened in Redis, N listeners, half on each). Each setup is
	// torn down before the next: the two together would need 2N
	// descriptors in this process. Round 0 warms up: the first setup pays
	// for what the runtime keeps for good once it has had N goroutines
	// (their descriptors, ~0.5 KiB each), which later setups reuse.
	var hubMem, rhMem []memory
	for r := range cfg.runs + 1 {
		measureHub := func() {
			h := hub.New(hub.Options{Logger: slog.New(slog.DiscardHandler)})
			addr, srv := listenServer(h.ServeListener)
			cursors := openAll(t, h, ids)
			ls := make([]farm.Listener, n)
			for i, id := range ids {
				ls[i] = farm.Listener{Addr: addr, Path: "/sub/" + id, LastEventID: cursors[i]}
			}
			before := selfMemory(t)
			f := farm.Start(t, farm.Options{Listeners: ls})
			after := selfMemory(t)
			if r == 1 {
				heapProfile(t, "hub-heap.pprof")
			}
			if r > 0 {
				hubMem = append(hubMem, memDelta(after, before, n))
				t.Logf("round %d: embedded %.2f KiB per idle listener", r, hubMem[len(hubMem)-1].RSS/1024)
			}
			if err := f.Close(); err != nil {
				t.Error(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := h.Shutdown(ctx); err != nil {
				t.Error(err)
			}
			srv.Close()
		}
		measureRedishub := func() {
			pair, ls := redishubPair(t, rdA.Addr, fmt.Sprintf("mem%d:", r), ids)
			before := selfMemory(t)
			f := farm.Start(t, farm.Options{Listeners: ls})
			after := selfMemory(t)
			if r == 1 {
				heapProfile(t, "redishub-heap.pprof")
			}
			if r > 0 {
				rhMem = append(rhMem, memDelta(after, before, n))
				t.Logf("round %d: redishub %.2f KiB per idle listener", r, rhMem[len(rhMem)-1].RSS/1024)
			}
			if err := f.Close(); err != nil {
				t.Error(err)
			}
			pair[0].stop()
			pair[1].stop()
		}
		if r%2 == 0 {
			measureHub()
			measureRedishub()
		} else {
			measureRedishub()
			measureHub()
		}
	}
	memv := func(ms []memory, v func(memory) float64) []float64 {
		r := make([]float64, len(ms))
		for i, m := range ms {
			r[i] = v(m) / 1024
		}
		return r
	}
	out.add(row{fig: "6", measure: fmt.Sprintf("memory per idle EventSource listener at %d, one per channel", n), note: "process RSS growth",
		subject: "redishub, 2 instances", base: "embedded, 1 instance", unit: "KiB",
		subj: memv(rhMem, func(m memory) float64 { return m.RSS }), baseV: memv(hubMem, func(m memory) float64 { return m.RSS }),
		target: "≤ 1.5×", holds: func(_, _, r float64) bool { return r <= 1.5 }})
	out.add(row{fig: "6", measure: "of which Go heap (HeapInuse)", subject: "redishub, 2 instances", base: "embedded, 1 instance", unit: "KiB",
		subj: memv(rhMem, func(m memory) float64 { return m.Heap }), baseV: memv(hubMem, func(m memory) float64 { return m.Heap })})
	out.add(row{fig: "6", measure: "of which goroutine stacks (StackInuse)", subject: "redishub, 2 instances", base: "embedded, 1 instance", unit: "KiB",
		subj: memv(rhMem, func(m memory) float64 { return m.Stack }), baseV: memv(hubMem, func(m memory) float64 { return m.Stack })})

	// The fan-out: redishub on Redis A, Nchan on Redis B.
	pair, ls := redishubPair(t, rdA.Addr, "fanout:", ids)
	rh := &fleet{
		name: "redishub",
		publish: func(ctx context.Context, i int, m relay.Message) error {
			_, err := pair[(i/2)%2].rel.Publish(ctx, ids[i], m)
			return err
		},
		cpu:   func() (time.Duration, error) { return selfCPU(), nil },
		rdb:   adminA,
		redis: redisPID(t, adminA),
		trips: func() int64 { return pair[0].rt.single.Load() + pair[1].rt.single.Load() },
	}
	rh.f = farm.Start(t, farm.Options{Listeners: ls})

	nodes := [2]*nchanNode{startNchanNode(t, 0, rdB.Addr), startNchanNode(t, 1, rdB.Addr)}
	nc := &fleet{
		name: "nchan+redis",
		publish: func(ctx context.Context, i int, m relay.Message) error {
			_, err := nodes[(i/2)%2].client.Publish(ctx, ids[i], m)
			return err
		},
		cpu: func() (time.Duration, error) {
			a, err := procCPU(nodes[0].worker)
			if err != nil {
				return 0, err
			}
			b, err := procCPU(nodes[1].worker)
			return a + b, err
		},
		rdb:   adminB,
		redis: redisPID(t, adminB),
	}
	// Each channel opened through the node that publishes to it (so that
	// its client knows it exists), listened to on node i mod 2.
	var parts [2][]string
	var at [2][]int
	for i, id := range ids {
		k := (i / 2) % 2
		parts[k], at[k] = append(parts[k], id), append(at[k], i)
	}
	cursor := make([]string, n)
	for k := range 2 {
		for j, c := range openAll(t, nodes[k].client, parts[k]) {
			cursor[at[k][j]] = c
		}
	}
	nls := make([]farm.Listener, n)
	for i, id := range ids {
		nls[i] = farm.Listener{Addr: nodes[i%2].ngx.Addr, Path: "/sub/" + id, LastEventID: cursor[i]}
	}
	nc.f = farm.Start(t, farm.Options{Listeners: nls})

	var e, g []fleetBurst
	for r := range cfg.runs + 1 { // round 0 warms up
		order := []*fleet{rh, nc}
		if r%2 == 1 {
			order = []*fleet{nc, rh}
		}
		var be, bg fleetBurst
		for _, s := range order {
			b := fleetRound(t, s, n, cfg.publishP, fmt.Sprintf("redishub-%s-%d", s.name, r))
			if s == rh {
				be = b
			} else {
				bg = b
			}
		}
		if r > 0 {
			if be.tripsPerMessage != 1 {
				t.Errorf("redishub: %.3g round trips to Redis per publish, want 1", be.tripsPerMessage)
			}
			e, g = append(e, be), append(g, bg)
		}
	}
	for _, s := range []*fleet{rh, nc} {
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
	}

	what := fmt.Sprintf("one message to each of %d channels, %d listeners on each of 2 instances", n, n/2)
	fv := func(bs []fleetBurst, v func(fleetBurst) float64) []float64 {
		r := make([]float64, len(bs))
		for i, b := range bs {
			r[i] = v(b)
		}
		return r
	}
	add := func(measure, unit string, v func(fleetBurst) float64, target string, holds func(s, b, r float64) bool) {
		out.add(row{fig: "6", measure: measure, subject: "redishub", base: "nchan+redis, 2 nodes", unit: unit,
			subj: fv(e, v), baseV: fv(g, v), target: target, holds: holds})
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	add(what+": deliveries/s", "1/s", func(b fleetBurst) float64 { return b.rate },
		"≥ 1.5×", func(_, _, r float64) bool { return r >= 1.5 })
	add("first publish to last delivery", "ms", func(b fleetBurst) float64 { return float64(b.elapsed) / 1e6 }, "", nil)
	add("latency p50", "ms", func(b fleetBurst) float64 { return float64(b.p50) / 1e6 }, "", nil)
	add("latency p99", "ms", func(b fleetBurst) float64 { return float64(b.p99) / 1e6 }, "", nil)
	add("server CPU per delivery, application side (this process; the 2 nginx workers)", "µs",
		func(b fleetBurst) float64 { return us(b.cpuPerDelivery) }, "", nil)
	add("redis-server CPU per delivery", "µs", func(b fleetBurst) float64 { return us(b.redisCPU) }, "", nil)
	add("server CPU per delivery, all", "µs", func(b fleetBurst) float64 { return us(b.cpuPerDelivery + b.redisCPU) }, "", nil)
	add("Redis commands per message (INFO commandstats, scripts' own calls included)", "commands",
		func(b fleetBurst) float64 { return b.calls }, "", nil)
	add("of which script calls (EVAL, EVALSHA)", "commands", func(b fleetBurst) float64 { return b.scripts }, "", nil)
	out.add(row{fig: "6", measure: "round trips to Redis per publish (go-redis hook)", subject: "redishub", unit: "round trips",
		subj: fv(e, func(b fleetBurst) float64 { return b.tripsPerMessage }), target: "1",
		holds: func(s, _, _ float64) bool { return s == 1 }})
}

// memDelta is the growth from before to after, per listener of n.
func memDelta(after, before memory, n int) memory {
	d := float64(n)
	return memory{RSS: (after.RSS - before.RSS) / d, Heap: (after.Heap - before.Heap) / d, Stack: (after.Stack - before.Stack) / d}
}

// redishubPair starts two redishub instances on Redis at addr under
// prefix, opens ids in Redis (half through each, so that both clients'
// connection pools warm up) and returns the instances and the listeners:
// channel i's on instance i mod 2.
func redishubPair(t *testing.T, addr, prefix string, ids []string) ([2]*rhInstance, []farm.Listener) {
	pair := [2]*rhInstance{startRedishub(t, addr, prefix), startRedishub(t, addr, prefix)}
	n := len(ids)
	cursor := append(openAll(t, pair[0].rel, ids[:n/2]), openAll(t, pair[1].rel, ids[n/2:])...)
	ls := make([]farm.Listener, n)
	for i, id := range ids {
		ls[i] = farm.Listener{Addr: pair[i%2].addr, Path: "/sub/" + id, LastEventID: cursor[i]}
	}
	return pair, ls
}
