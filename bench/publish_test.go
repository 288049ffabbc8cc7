package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush/internal/farm"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
)

// publishBody is the body of every publish of figure 2, about 100 bytes of
// JSON as an application would push.
var publishBody = farm.Body("publish", time.Unix(1700000000, 0), 48)

const publishType = "application/json"

// rate is a load generator's outcome: requests answered 201 or 202 and the
// time from the start until the last one in flight was answered.
type rate struct {
	requests int64
	elapsed  time.Duration
}

func (r rate) perSecond() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// runClient publishes with nchan.Client.Publish from conc goroutines for d.
func runClient(c *nchan.Client, channel string, conc int, d time.Duration) (rate, error) {
	var (
		n    atomic.Int64
		stop atomic.Bool
		fail atomic.Value
		wg   sync.WaitGroup
	)
	ctx := context.Background()
	m := relay.Message{Body: publishBody, ContentType: publishType}
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for range conc {
		wg.Go(func() {
			for !stop.Load() {
				if _, err := c.Publish(ctx, channel, m); err != nil {
					fail.CompareAndSwap(nil, err)
					stop.Store(true)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	r := rate{requests: n.Load(), elapsed: time.Since(start)}
	if err, _ := fail.Load().(error); err != nil {
		return r, err
	}
	return r, nil
}

// leanRequest is the request that the lean generator sends: what
// nchan.Client sends for Publish, built once.
func leanRequest(addr, path string) []byte {
	return fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
		path, addr, publishType, len(publishBody), publishBody)
}

// runLean is the lean load generator (wrk's way): conc raw TCP keep-alive
// connections, each sending the prebuilt request and reading the answer's
// status line and headers, skipping Content-Length bytes of body, for d. A
// connection that the server closes (nginx's keepalive_requests) is dialled
// again.
func runLean(addr string, req []byte, conc int, d time.Duration) (rate, error) {
	var (
		n    atomic.Int64
		stop atomic.Bool
		fail atomic.Value
		wg   sync.WaitGroup
	)
	dial := func() (net.Conn, *bufio.Reader, error) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, nil, err
		}
		return c, bufio.NewReaderSize(c, 4096), nil
	}
	conns := make([]net.Conn, conc)
	readers := make([]*bufio.Reader, conc)
	for i := range conc {
		c, br, err := dial()
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return rate{}, err
		}
		conns[i], readers[i] = c, br
	}
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for i := range conc {
		wg.Go(func() {
			c, br := conns[i], readers[i]
			defer func() { c.Close() }()
			for !stop.Load() {
				if _, err := c.Write(req); err != nil {
					fail.CompareAndSwap(nil, err)
					stop.Store(true)
					return
				}
				status, closing, err := readAnswer(br)
				if err != nil {
					fail.CompareAndSwap(nil, err)
					stop.Store(true)
					return
				}
				if status != 201 && status != 202 {
					fail.CompareAndSwap(nil, fmt.Errorf("lean generator: status %d", status))
					stop.Store(true)
					return
				}
				n.Add(1)
				if closing {
					c.Close()
					if c, br, err = dial(); err != nil {
						fail.CompareAndSwap(nil, err)
						stop.Store(true)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	r := rate{requests: n.Load(), elapsed: time.Since(start)}
	if err, _ := fail.Load().(error); err != nil {
		return r, err
	}
	return r, nil
}

var errBadAnswer = errors.New("lean generator: malformed answer")

// readAnswer reads one HTTP/1.1 answer: the status, whether the server
// closes the connection after it, and its Content-Length body, skipped.
func readAnswer(br *bufio.Reader) (status int, closing bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, false, fmt.Errorf("%w: status line %q", errBadAnswer, line)
	}
	status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	length := -1
	for {
		h, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		if len(h) <= 2 {
			break
		}
		if name, value, ok := bytes.Cut(h, []byte(":")); ok {
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				length, err = strconv.Atoi(string(value))
				if err != nil {
					return 0, false, fmt.Errorf("%w: Content-Length %q", errBadAnswer, value)
				}
			case bytes.EqualFold(name, []byte("Connection")):
				closing = bytes.EqualFold(value, []byte("close"))
			}
		}
	}
	if length < 0 {
		return 0, false, fmt.Errorf("%w: no Content-Length", errBadAnswer)
	}
	if _, err := br.Discard(length); err != nil {
		return 0, false, err
	}
	return status, closing, nil
}

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// runWrk runs `wrk -t1 -c<conc>` posting the same request for d (whole
// seconds, at least one) and returns its requests per second.
func runWrk(dir, url string, conc int, d time.Duration) (float64, error) {
	script := filepath.Join(dir, "post.lua")
	lua := fmt.Sprintf("wrk.method = \"POST\"\nwrk.body = [==[%s]==]\nwrk.headers[\"Content-Type\"] = %q\n", publishBody, publishType)
	if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
		return 0, err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	out, err := exec.Command("wrk", "-t1", "-c"+strconv.Itoa(conc), "-d"+strconv.Itoa(secs)+"s", "-s", script, url).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("wrk: %v: %s", err, out)
	}
	if bytes.Contains(out, []byte("Non-2xx")) || bytes.Contains(out, []byte("Socket errors")) {
		return 0, fmt.Errorf("wrk reported errors: %s", out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("wrk: no Requests/sec in %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// publishFigures: figure 2, nchan.Client.Publish against the lean load
// generator (and wrk, if installed) posting the same bodies to the same
// Nchan channel.
func publishFigures(t *testing.T, cfg suiteConfig, out *rows) {
	ngx := startNchan(t, 64)
	client, err := nchan.New(ngx.URL+"/pub/{channel}", nchan.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections) // before nginx's graceful stop
	ch := uuid.NewString()
	if _, err := client.Open(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	path := "/pub/" + ch
	req := leanRequest(ngx.Addr, path)
	_, haveWrk := exec.LookPath("wrk")
	wrk := haveWrk == nil && cfg.full

	for _, conc := range cfg.pubConc {
		var cl, ln, wk []float64
		for run := range cfg.runs {
			// Alternate which goes first, so that neither always meets a
			// fresher server.
			var rc, rl rate
			var err error
			first, second := "client", "lean"
			if run%2 == 1 {
				first, second = second, first
			}
			for _, which := range []string{first, second} {
				if which == "client" {
					rc, err = runClient(client, ch, conc, cfg.pubDur)
				} else {
					rl, err = runLean(ngx.Addr, req, conc, cfg.pubDur)
				}
				if err != nil {
					t.Fatalf("%s at %d concurrent: %v", which, conc, err)
				}
			}
			if rc.requests == 0 || rl.requests == 0 {
				t.Fatalf("at %d concurrent: client %d requests, lean generator %d", conc, rc.requests, rl.requests)
			}
			cl, ln = append(cl, rc.perSecond()), append(ln, rl.perSecond())
			if wrk {
				w, err := runWrk(t.TempDir(), ngx.URL+path, conc, cfg.pubDur)
				if err != nil {
					t.Fatal(err)
				}
				wk = append(wk, w)
			}
		}
		x := row{fig: "2", measure: "publish to one Nchan channel", note: fmt.Sprintf("%d concurrent", conc),
			subject: "nchan.Client", base: "lean generator", unit: "req/s", subj: cl, baseV: ln}
		switch conc {
		case 1:
			x.target, x.holds = "≥ 0.90×", func(_, _, r float64) bool { return r >= 0.90 }
		case 64:
			x.target, x.holds = "≥ 0.85×", func(_, _, r float64) bool { return r >= 0.85 }
		}
		out.add(x)
		if wrk {
			out.add(row{fig: "2", measure: "publish to one Nchan channel", note: fmt.Sprintf("%d concurrent", conc),
				subject: "lean generator", base: "wrk -t1", unit: "req/s", subj: ln, baseV: wk})
		}
	}
}
