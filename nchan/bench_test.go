package nchan

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// BenchmarkPublish publishes a 100-byte JSON message to open channels of a
// real Nchan (one worker, memory store), sequentially and from 16 and 64
// goroutines (goroutine i publishes to channel i; one channel would take more
// than 32767 messages a second, where Nchan's 16-bit message tag wraps),
// through:
//
//   - client: a Client with its defaults (its own transport; a GET check
//     once per ExistsTTL);
//   - client-check: a Client that checks with a GET before every publish
//     (ExistsTTL < 0), the cost of the naive way to refuse unopened channels;
//   - client-nethttp: a Client given a net/http client with the same
//     Transport settings (Options.HTTPClient), what the Client did before
//     it had its own transport;
//   - raw: net/http POSTs of the same bodies with the same Transport
//     settings, reading and closing each answer.
//
// SESSIONPUSH_BENCH_REDIS=1 gives Nchan a Redis store (a redis-server on
// loopback), where each publish waits for Redis.
//
// Run: go test -run '^$' -bench 'BenchmarkPublish$' -benchtime 3s ./nchan/
// For a comparison with wrk on the same nginx, see BenchmarkPublishVsWrk.
func BenchmarkPublish(b *testing.B) {
	redisAddr := ""
	if os.Getenv("SESSIONPUSH_BENCH_REDIS") != "" {
		redisAddr = servers.StartRedis(b).Addr
	}
	n := startNchan(b, redisAddr)
	body := benchBody()
	const maxConc = 64
	channels := make([]string, maxConc)
	opener := newClient(b, n, "/pub/{channel}", Options{})
	for i := range channels {
		channels[i] = fmt.Sprintf("bench-%d", i)
		if _, err := opener.Open(context.Background(), channels[i]); err != nil {
			b.Fatal(err)
		}
	}
	msg := relay.Message{Body: body, ContentType: "application/json"}

	variants := []struct {
		name string
		op   func() func(channel string) error // a publish function per sub-benchmark
	}{
		{"client", func() func(string) error {
			c := newClient(b, n, "/pub/{channel}", Options{})
			return func(channel string) error { _, err := c.Publish(context.Background(), channel, msg); return err }
		}},
		{"client-check", func() func(string) error {
			c := newClient(b, n, "/pub/{channel}", Options{ExistsTTL: -1})
			return func(channel string) error { _, err := c.Publish(context.Background(), channel, msg); return err }
		}},
		{"client-nethttp", func() func(string) error {
			c := newClient(b, n, "/pub/{channel}", Options{HTTPClient: &http.Client{Transport: netHTTPTransport()}})
			return func(channel string) error { _, err := c.Publish(context.Background(), channel, msg); return err }
		}},
		{"raw", func() func(string) error {
			hc := &http.Client{Transport: netHTTPTransport()}
			return func(channel string) error {
				req, err := http.NewRequest(http.MethodPost, n.URL+"/pub/"+channel, bytes.NewReader(body))
				if err != nil {
					return err
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusCreated {
					return fmt.Errorf("raw POST: %s", resp.Status)
				}
				return nil
			}
		}},
	}
	for _, v := range variants {
		for _, conc := range []int{1, 16, 64} {
			name := fmt.Sprintf("%s/seq", v.name)
			if conc > 1 {
				name = fmt.Sprintf("%s/conc%d", v.name, conc)
			}
			b.Run(name, func(b *testing.B) {
				publish := v.op()
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				run(b, conc, func(i int) error { return publish(channels[i]) })
			})
		}
	}
}

// run calls op b.N times in total from conc goroutines; op gets the
// goroutine's number.
func run(b *testing.B, conc int, op func(int) error) {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	b.ResetTimer()
	for i := range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := op(i); err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if first != nil {
		b.Fatal(first)
	}
}

// BenchmarkPublishVsWrk measures, on one nginx, wrk (the C HTTP benchmark
// tool, a yardstick, not needed in CI: the benchmark skips without it)
// posting the bench body to the 64 bench channels in turn, then a Client
// publishing the same bodies to the same channels from as many goroutines
// as wrk has connections (goroutine i to channel i), in alternating
// one-second turns, SESSIONPUSH_WRK_ROUNDS (default 6) each; wrk runs
// SESSIONPUSH_WRK_THREADS threads (default 1); SESSIONPUSH_WRK_CLIENT=nethttp
// gives the Client a net/http client instead of its own transport. It
// reports both
// rates, client/wrk, and the CPU time per request of wrk, the client and
// nginx's worker. Run:
//
//	go test -run '^$' -bench BenchmarkPublishVsWrk -benchtime 1x -count 3 ./nchan/
func BenchmarkPublishVsWrk(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed")
	}
	rounds := 6
	if s := os.Getenv("SESSIONPUSH_WRK_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("SESSIONPUSH_WRK_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	threads := "1"
	if s := os.Getenv("SESSIONPUSH_WRK_THREADS"); s != "" {
		if n, err := strconv.Atoi(s); err != nil || n <= 0 {
			b.Fatalf("SESSIONPUSH_WRK_THREADS=%q: want a positive number", s)
		}
		threads = s
	}
	n := startNchan(b, "")
	body := benchBody()
	const maxConc = 64
	channels := make([]string, maxConc)
	opener := newClient(b, n, "/pub/{channel}", Options{})
	var lua strings.Builder
	fmt.Fprintf(&lua, "wrk.method = \"POST\"\nwrk.body = %q\nwrk.headers[\"Content-Type\"] = \"application/json\"\nlocal reqs = {}\n", body)
	lua.WriteString("init = function(args)\n")
	for i := range channels {
		channels[i] = fmt.Sprintf("bench-%d", i)
		if _, err := opener.Open(context.Background(), channels[i]); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&lua, "  reqs[%d] = wrk.format(nil, \"/pub/%s\")\n", i+1, channels[i])
	}
	fmt.Fprintf(&lua, "end\nlocal i = 0\nrequest = function()\n  i = i %% %d + 1\n  return reqs[i]\nend\n", maxConc)
	script := filepath.Join(b.TempDir(), "post.lua")
	if err := os.WriteFile(script, []byte(lua.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	msg := relay.Message{Body: body, ContentType: "application/json"}
	reqsPerSec := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reqsTotal := regexp.MustCompile(`(\d+) requests in`)
	non2xx := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)

	worker := n.WorkerPID()
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("conc%d", conc), func(b *testing.B) {
			var opts Options
			if os.Getenv("SESSIONPUSH_WRK_CLIENT") == "nethttp" {
				opts.HTTPClient = &http.Client{Transport: netHTTPTransport()}
			}
			c := newClient(b, n, "/pub/{channel}", opts)
			defer c.CloseIdleConnections()
			// Rounds of one second each, wrk and the client in turn (who
			// goes first alternates), so that a change in the machine's
			// load hits both alike.
			var (
				wrkReqs, clientReqs         float64
				wrkTime, clientTime         time.Duration
				wrkCPU, clientCPU           time.Duration
				nginxForWrk, nginxForClient time.Duration
			)
			runWrk := func() {
				cpu0 := procCPU(b, worker)
				cmd := exec.Command(wrk, "-t"+threads, fmt.Sprintf("-c%d", max(conc, mustAtoi(threads))), "-d1s", "-s", script, n.URL+"/pub/"+channels[0])
				out, err := cmd.CombinedOutput()
				if err != nil {
					b.Fatalf("wrk: %v\n%s", err, out)
				}
				nginxForWrk += procCPU(b, worker) - cpu0
				m, total := reqsPerSec.FindSubmatch(out), reqsTotal.FindSubmatch(out)
				if m == nil || total == nil || non2xx.Match(out) {
					b.Fatalf("wrk output without a rate, or with failures:\n%s", out)
				}
				rate, _ := strconv.ParseFloat(string(m[1]), 64)
				reqs, _ := strconv.ParseFloat(string(total[1]), 64)
				wrkReqs += reqs
				wrkTime += time.Duration(reqs / rate * float64(time.Second))
				wrkCPU += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			runClient := func() {
				cpu0, self0 := procCPU(b, worker), selfCPU(b)
				var (
					count   atomic.Int64
					wg      sync.WaitGroup
					errOnce sync.Once
					first   error
				)
				start := time.Now()
				end := start.Add(time.Second)
				for i := range conc {
					wg.Go(func() {
						for time.Now().Before(end) {
							if _, err := c.Publish(context.Background(), channels[i], msg); err != nil {
								errOnce.Do(func() { first = err })
								return
							}
							count.Add(1)
						}
					})
				}
				wg.Wait()
				clientTime += time.Since(start)
				if first != nil {
					b.Fatal(first)
				}
				clientCPU += selfCPU(b) - self0
				nginxForClient += procCPU(b, worker) - cpu0
				clientReqs += float64(count.Load())
			}
			for round := range rounds {
				if round%2 == 0 {
					runWrk()
					runClient()
				} else {
					runClient()
					runWrk()
				}
			}
			wrkRate, clientRate := wrkReqs/wrkTime.Seconds(), clientReqs/clientTime.Seconds()
			b.ReportMetric(wrkRate, "wrk-req/s")
			b.ReportMetric(clientRate, "client-req/s")
			b.ReportMetric(clientRate/wrkRate, "client/wrk")
			// CPU time per request, in µs: what each side and nginx spend.
			b.ReportMetric(float64(wrkCPU.Microseconds())/wrkReqs, "wrk-cpu-µs/req")
			b.ReportMetric(float64(nginxForWrk.Microseconds())/wrkReqs, "nginx-cpu-µs/wrk-req")
			b.ReportMetric(float64(clientCPU.Microseconds())/clientReqs, "client-cpu-µs/req")
			b.ReportMetric(float64(nginxForClient.Microseconds())/clientReqs, "nginx-cpu-µs/client-req")
		})
	}
}

// benchBody is a 100-byte JSON message.
func benchBody() []byte {
	body := bytes.Repeat([]byte("x"), 100)
	copy(body, `{"type":"note","text":"`)
	body[len(body)-2], body[len(body)-1] = '"', '}'
	return body
}

// procCPU is the CPU time (user and system) that process pid has used.
func procCPU(b *testing.B, pid int) time.Duration {
	d, err := servers.ProcCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// selfCPU is the CPU time that this process has used.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
