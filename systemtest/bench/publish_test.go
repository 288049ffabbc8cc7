package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
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

// runLean is the lean load generator, built the way wrk is: one thread,
// an epoll loop over conc non-blocking keep-alive TCP connections, each
// sending the prebuilt request again as soon as the answer to the previous
// one is in (status line, headers up to Content-Length, body skipped). A
// connection that the server closes (nginx's keepalive_requests) is
// dialled again. After d it sends nothing more and counts the answers still
// in flight.
func runLean(addr string, req []byte, conc int, d time.Duration) (rate, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return rate{}, fmt.Errorf("lean generator: %q is not an IPv4 host:port", addr)
	}
	sa := &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return rate{}, err
	}
	defer syscall.Close(epfd)

	type conn struct {
		fd      int
		buf     []byte
		waiting bool // a request is in flight
	}
	conns := map[int]*conn{}
	defer func() {
		for fd := range conns {
			syscall.Close(fd)
		}
	}()
	dial := func() (*conn, error) {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		// Connect blocking (loopback: at once), then go non-blocking.
		if err := syscall.Connect(fd, sa); err != nil {
			syscall.Close(fd)
			return nil, err
		}
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		if err := syscall.SetNonblock(fd, true); err != nil {
			syscall.Close(fd)
			return nil, err
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)}
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			syscall.Close(fd)
			return nil, err
		}
		c := &conn{fd: fd, buf: make([]byte, 0, 4096)}
		conns[fd] = c
		return c, nil
	}
	send := func(c *conn) error {
		n, err := syscall.Write(c.fd, req)
		if err != nil {
			return err
		}
		if n != len(req) { // a fresh loopback socket takes a small request whole
			return fmt.Errorf("lean generator: short write %d of %d", n, len(req))
		}
		c.waiting = true
		return nil
	}
	for range conc {
		if _, err := dial(); err != nil {
			return rate{}, err
		}
	}
	var (
		count    int64
		inFlight int
		stopped  bool
		events   = make([]syscall.EpollEvent, 128)
		scratch  = make([]byte, 16<<10)
	)
	start := time.Now()
	deadline := start.Add(d)
	for _, c := range conns {
		if err := send(c); err != nil {
			return rate{}, err
		}
		inFlight++
	}
	last := start
	for inFlight > 0 {
		if !stopped && !time.Now().Before(deadline) {
			stopped = true
		}
		if time.Since(deadline) > 5*time.Second {
			return rate{}, fmt.Errorf("lean generator: %d answers missing 5s after the end", inFlight)
		}
		n, err := syscall.EpollWait(epfd, events, 50)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return rate{}, err
		}
		for _, ev := range events[:n] {
			c := conns[int(ev.Fd)]
			if c == nil {
				continue
			}
			m, err := syscall.Read(c.fd, scratch)
			if err == syscall.EAGAIN {
				continue
			}
			if err != nil {
				return rate{}, err
			}
			if m == 0 {
				if c.waiting {
					return rate{}, errors.New("lean generator: connection closed with a request in flight")
				}
				continue
			}
			c.buf = append(c.buf, scratch[:m]...)
			for c.waiting {
				used, status, closing, err := parseAnswer(c.buf)
				if err != nil {
					return rate{}, err
				}
				if used == 0 {
					break // incomplete
				}
				c.buf = c.buf[:copy(c.buf, c.buf[used:])]
				c.waiting = false
				inFlight--
				if status != 201 && status != 202 {
					return rate{}, fmt.Errorf("lean generator: status %d", status)
				}
				count++
				last = time.Now()
				if closing {
					syscall.Close(c.fd)
					delete(conns, c.fd)
					if stopped {
						break
					}
					if c, err = dial(); err != nil {
						return rate{}, err
					}
				}
				if !stopped {
					if err := send(c); err != nil {
						return rate{}, err
					}
					inFlight++
				}
			}
		}
	}
	return rate{requests: count, elapsed: last.Sub(start)}, nil
}

var errBadAnswer = errors.New("lean generator: malformed answer")

// parseAnswer parses one HTTP/1.1 answer at the start of b: how many bytes
// it takes (0: incomplete), its status and whether the server closes the
// connection after it. It needs a Content-Length, as Nchan sends.
func parseAnswer(b []byte) (used, status int, closing bool, err error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > 8192 {
			return 0, 0, false, fmt.Errorf("%w: no end of headers in %d bytes", errBadAnswer, len(b))
		}
		return 0, 0, false, nil
	}
	head := b[:end]
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, 0, false, fmt.Errorf("%w: status line %q", errBadAnswer, line)
	}
	status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	length := -1
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.Atoi(string(value))
			if err != nil {
				return 0, 0, false, fmt.Errorf("%w: Content-Length %q", errBadAnswer, value)
			}
		case bytes.EqualFold(name, []byte("Connection")):
			closing = bytes.EqualFold(value, []byte("close"))
		}
	}
	if length < 0 {
		return 0, 0, false, fmt.Errorf("%w: no Content-Length", errBadAnswer)
	}
	total := end + 4 + length
	if len(b) < total {
		return 0, 0, false, nil
	}
	return total, status, closing, nil
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
			// Four slices each, in turns (alternating which goes first),
			// so that both meet the same moments of the machine's load.
			var rc, rl rate
			const slices = 4
			for k := range 2 * slices {
				which := (k + run) % 2
				var r rate
				var err error
				if which == 0 {
					r, err = runClient(client, ch, conc, cfg.pubDur/slices)
				} else {
					r, err = runLean(ngx.Addr, req, conc, cfg.pubDur/slices)
				}
				if err != nil {
					t.Fatalf("%s at %d concurrent: %v", []string{"client", "lean generator"}[which], conc, err)
				}
				sum := []*rate{&rc, &rl}[which]
				sum.requests += r.requests
				sum.elapsed += r.elapsed
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
