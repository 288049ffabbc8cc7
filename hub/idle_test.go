//go:build linux

package hub

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
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
	"github.com/sessionpush/sessionpush/relay"
)

// TestIdleListeners measures what idle EventSource listeners cost the
// server and what a delivery costs it, with the clients in a child process
// (this test binary, running TestIdleClient) over real TCP. It runs only
// with HUB_IDLE_BENCH=1; HUB_IDLE_N sets the number of listeners (10000),
// HUB_IDLE_MODE=handler serves them on net/http's handler goroutines, as
// before hijacking, HUB_IDLE_SHAPE=one puts them all on one channel (else
// one channel each), HUB_IDLE_PUBLISHERS the goroutines that publish to
// them (1), HUB_IDLE_ROUNDS the rounds of publishing (5), HUB_IDLE_PROTO
// the protocol (empty: plain HTTP/1.1; tls: HTTP/1.1 over TLS; h2: HTTP/2
// with a connection per listener; h2mux: HTTP/2 with 100 listeners per
// connection). It
// reports figures, asserts nothing about them.
func TestIdleListeners(t *testing.T) {
	if os.Getenv("HUB_IDLE_BENCH") != "1" {
		t.Skip("set HUB_IDLE_BENCH=1 to measure idle listeners")
	}
	n := envInt("HUB_IDLE_N", 10000)
	rounds := envInt("HUB_IDLE_ROUNDS", 5)
	one := os.Getenv("HUB_IDLE_SHAPE") == "one"
	h := New(Options{MaxListeners: -1})
	h.noHijack = os.Getenv("HUB_IDLE_MODE") == "handler"
	// raw: no hub, the floor: one goroutine writes each frame to each
	// hijacked connection in turn.
	raw := os.Getenv("HUB_IDLE_MODE") == "raw"
	var rawMu sync.Mutex
	var rawConns []net.Conn
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if raw {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n"))
			rawMu.Lock()
			rawConns = append(rawConns, conn)
			rawMu.Unlock()
			h.stats.listeners[transportEventSource].Add(1)
			return
		}
		h.ServeListener(w, r, strings.TrimPrefix(r.URL.Path, "/sub/"))
	}))
	// HUB_IDLE_PROTO: plain HTTP/1.1 (empty), tls (HTTP/1.1 over TLS), h2
	// (HTTP/2, a connection per listener) or h2mux (HTTP/2, 100 listeners
	// per connection).
	proto := os.Getenv("HUB_IDLE_PROTO")
	switch proto {
	case "":
		srv.Start()
	case "tls", "h2", "h2mux":
		srv.EnableHTTP2 = proto != "tls"
		srv.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 100}
		srv.StartTLS()
	default:
		t.Fatalf("HUB_IDLE_PROTO=%q", proto)
	}
	defer srv.Close()
	defer h.Shutdown(context.Background())
	names := make([]string, n)
	for i := range names {
		names[i] = "c" + strconv.Itoa(i)
		if one {
			names[i] = "b"
		}
	}
	for _, name := range names {
		mustOpen(t, h, name)
	}

	rss0, heap0 := memNow()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClient$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HUB_IDLE_CLIENT="+srv.Listener.Addr().String(),
		"HUB_IDLE_CHANNELS="+strings.Join(uniq(names), ","), "HUB_IDLE_N="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	lines := bufio.NewScanner(stdout)
	expect := func(want string) {
		t.Helper()
		for lines.Scan() {
			if lines.Text() == want {
				return
			}
		}
		t.Fatalf("client ended before %q: %v", want, lines.Err())
	}
	expect("ready")
	eventually(t, "all listeners in", func() bool { return h.Stats().Listeners.EventSource == int64(n) })
	rss1, heap1 := memNow()
	goroutines := runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("stacks in use %d B/listener (all goroutines)", ms.StackInuse/uint64(n))
	mode := "hijack"
	if h.noHijack {
		mode = "handler"
	}
	if raw {
		mode = "raw"
	}
	t.Logf("mode=%s proto=%q shape one=%v n=%d: RSS %.0f B/listener, heap+stack %.0f B/listener, goroutines %d",
		mode, proto, one, n, float64(rss1-rss0)/float64(n), float64(heap1-heap0)/float64(n), runtime.NumGoroutine())

	defer func() {
		for _, c := range rawConns {
			c.Close()
		}
	}()
	if f := os.Getenv("HUB_IDLE_CPUPROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		pprof.StartCPUProfile(out)
		defer pprof.StopCPUProfile()
	}
	var cpu, rate []float64
	for r := 1; r <= rounds; r++ {
		u0, t0 := cpuNow(), time.Now()
		if raw {
			frame := []byte("id: 1:1\ndata: hello\n\n")
			for _, c := range rawConns {
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				c.Write(frame)
			}
		} else if one {
			mustPublish(t, h, "b", text("hello"))
		} else {
			// HUB_IDLE_PUBLISHERS goroutines share the channels, as
			// sessionpush's fan-out (Config.Concurrency) does.
			var wg sync.WaitGroup
			p := envInt("HUB_IDLE_PUBLISHERS", 1)
			for k := range p {
				wg.Go(func() {
					for i := k; i < len(names); i += p {
						mustPublish(t, h, names[i], text("hello"))
					}
				})
			}
			wg.Wait()
		}
		expect("got " + strconv.Itoa(r))
		el := time.Since(t0)
		cpu = append(cpu, float64(cpuNow()-u0)/float64(n)/1e3)
		rate = append(rate, float64(n)/el.Seconds())
	}
	slices.Sort(cpu)
	slices.Sort(rate)
	t.Logf("mode=%s one=%v: CPU µs/delivery median %.2f (%.2f–%.2f); deliveries/s median %.0f (%.0f–%.0f)",
		mode, one, cpu[len(cpu)/2], cpu[0], cpu[len(cpu)-1], rate[len(rate)/2], rate[0], rate[len(rate)-1])
	fmt.Printf("IDLE mode=%s proto=%q one=%v n=%d rss_per=%.0f heap_per=%.0f goroutines_per=%.2f cpu_us=%.2f rate=%.0f\n", mode, proto, one, n,
		float64(rss1-rss0)/float64(n), float64(heap1-heap0)/float64(n), float64(goroutines)/float64(n), cpu[len(cpu)/2], rate[len(rate)/2])
}

func uniq(s []string) []string { return slices.Compact(slices.Clone(s)) }

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil && v > 0 {
		return v
	}
	return def
}

// memNow returns the process RSS and the heap and stacks in use, in bytes,
// after a collection.
func memNow() (rss, heap int64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	kb, _ := servers.ProcStatus("self", "VmRSS")
	return kb << 10, int64(ms.HeapInuse + ms.StackInuse)
}

// cpuNow returns the process's user and system CPU time in nanoseconds.
func cpuNow() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// TestIdleClient is the client side of TestIdleListeners, run in a child
// process: it opens HUB_IDLE_N EventSource streams over the channels in
// HUB_IDLE_CHANNELS, round robin, prints "ready" once all have their ": hi",
// then "got k" each time k*N events have arrived in all, until its stdin
// ends.
func TestIdleClient(t *testing.T) {
	addr := os.Getenv("HUB_IDLE_CLIENT")
	if addr == "" {
		t.Skip("the child process of TestIdleListeners")
	}
	n := envInt("HUB_IDLE_N", 10000)
	channels := strings.Split(os.Getenv("HUB_IDLE_CHANNELS"), ",")
	var ready sync.WaitGroup
	var events atomic.Int64
	rounds := make(chan int64, 100)
	var conns []io.Closer
	proto := os.Getenv("HUB_IDLE_PROTO")
	insecure := &tls.Config{InsecureSkipVerify: true} // a measurement against the parent's test server
	var shared *http.Transport
	for i := range n {
		var body io.Reader
		switch proto {
		case "h2", "h2mux":
			tr := shared
			if tr == nil || proto == "h2" {
				tr = &http.Transport{TLSClientConfig: insecure, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: -1}
				if proto == "h2mux" {
					shared = tr
				}
			}
			req, _ := http.NewRequest("GET", "https://"+addr+"/sub/"+channels[i%len(channels)], nil)
			req.Header.Set("Accept", "text/event-stream")
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.ProtoMajor != 2 {
				t.Fatalf("%s, want HTTP/2", resp.Proto)
			}
			conns = append(conns, resp.Body)
			body = resp.Body
		default:
			var conn net.Conn
			var err error
			if proto == "tls" {
				conn, err = tls.Dial("tcp", addr, insecure)
			} else {
				conn, err = net.Dial("tcp", addr)
			}
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			fmt.Fprintf(conn, "GET /sub/%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", channels[i%len(channels)])
			body = conn
		}
		ready.Add(1)
		go func() {
			r := bufio.NewReaderSize(body, 256)
			hi := false
			for {
				line, err := r.ReadSlice('\n')
				if err != nil {
					if !hi {
						ready.Done()
					}
					return
				}
				switch {
				case !hi && string(line) == ": hi\n":
					hi = true
					ready.Done()
				case strings.HasPrefix(string(line), "id: "):
					if e := events.Add(1); e%int64(n) == 0 {
						rounds <- e / int64(n)
					}
				}
			}
		}()
	}
	ready.Wait()
	fmt.Println("ready")
	go func() {
		for k := range rounds {
			fmt.Println("got", k)
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

var _ = relay.NoCursor
