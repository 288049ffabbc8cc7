package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relaytest"
)

// The listeners run in a child process, a "farm": this test binary run
// again with farmEnv set, as TestListenerFarm. So the benchmark's client
// side has its own RLIMIT_NOFILE (20000 here, and the hard limit cannot be
// raised without CAP_SYS_RESOURCE): the embedded relay's N server ends and
// the farm's N client ends would not fit in one process at N = 10,000. Both
// relays get the same farm, so the client side costs the same.
//
// Protocol, one line each. Parent to farm: "W <data>" per message in round
// order, "L <addr> <path> <cursor>" per listener, "GO" (connect all),
// "CHECK" and then EOF. Farm to parent, prefixed "FARM ": "CONNECTED", "DONE
// <round> <unix nanoseconds of the N-th delivery>", "CHECK <verdict>",
// "ERR <text>".
const farmEnv = "SESSIONPUSH_BENCH_FARM"

const farmPrefix = "FARM "

// farm is the parent's handle on a farm process.
type farm struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string // the farm's protocol lines; closed at its exit
	done  map[int]int64
}

// startFarm starts a farm for listeners on addr at paths (resuming from
// cursors) that expect the messages want, one per round, and waits until
// all are connected.
func startFarm(t *testing.T, addr string, paths, cursors []string, want []string) *farm {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestListenerFarm$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), farmEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &farm{cmd: cmd, in: in, lines: make(chan string, 64), done: map[int]int64{}}
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), farmPrefix); ok {
				f.lines <- line
			}
		}
		close(f.lines)
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		in.Close() // EOF: the farm closes its connections and exits
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("listener farm %d did not exit; killing it", cmd.Process.Pid)
			cmd.Process.Kill()
			<-exited
		}
	})

	w := bufio.NewWriter(in)
	for _, d := range want {
		fmt.Fprintf(w, "W %s\n", d)
	}
	for i := range paths {
		c := cursors[i]
		if c == "" {
			c = "-"
		}
		fmt.Fprintf(w, "L %s %s %s\n", addr, paths[i], c)
	}
	fmt.Fprintln(w, "GO")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if line := f.next(t, 5*time.Minute); line != "CONNECTED" {
		t.Fatalf("listener farm: %s", line)
	}
	return f
}

// next returns the farm's next line other than DONE, recording DONEs.
func (f *farm) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-f.lines:
			if !ok {
				t.Fatal("listener farm exited")
			}
			if rest, ok := strings.CutPrefix(line, "DONE "); ok {
				var r int
				var at int64
				fmt.Sscan(rest, &r, &at)
				f.done[r] = at
				continue
			}
			return line
		case <-deadline:
			return "timeout"
		}
	}
}

// wait returns when the last listener got round r's message.
func (f *farm) wait(t *testing.T, r int, timeout time.Duration) (time.Time, bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if at, ok := f.done[r]; ok {
			return time.Unix(0, at), true
		}
		select {
		case line, ok := <-f.lines:
			if !ok {
				t.Fatal("listener farm exited")
			}
			rest, isDone := strings.CutPrefix(line, "DONE ")
			if !isDone {
				t.Fatalf("listener farm: %s", line)
			}
			var rr int
			var at int64
			fmt.Sscan(rest, &rr, &at)
			f.done[rr] = at
		case <-deadline:
			return time.Time{}, false
		}
	}
}

// check asks the farm whether every listener got every message exactly
// once and nothing else; it returns "" if so, else what went wrong.
func (f *farm) check(t *testing.T) string {
	t.Helper()
	if _, err := io.WriteString(f.in, "CHECK\n"); err != nil {
		t.Fatal(err)
	}
	line := f.next(t, time.Minute)
	verdict, ok := strings.CutPrefix(line, "CHECK ")
	if !ok {
		return line
	}
	if verdict == "ok" {
		return ""
	}
	return verdict
}

// TestListenerFarm is the farm process; without farmEnv it does nothing.
func TestListenerFarm(t *testing.T) {
	if os.Getenv(farmEnv) != "1" {
		t.Skip("the benchmark's listener process; run by TestBroadcastScale")
	}
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(out, farmPrefix+format+"\n", args...)
		out.Flush()
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 1<<20)
	var (
		want  []string
		specs [][3]string
	)
	for in.Scan() {
		line := in.Text()
		if line == "GO" {
			break
		}
		if d, ok := strings.CutPrefix(line, "W "); ok {
			want = append(want, d)
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "L" {
			say("ERR bad line %q", line)
			return
		}
		if f[3] == "-" {
			f[3] = ""
		}
		specs = append(specs, [3]string{f[1], f[2], f[3]})
	}
	l := newListeners(len(specs), len(want), want, func(r int, at int64) { say("DONE %d %d", r, at) })
	defer l.stop()
	sem := make(chan struct{}, 64)
	for i, s := range specs {
		l.start(i, s[0], s[1], s[2], sem)
	}
	if err := l.waitConnected(5 * time.Minute); err != nil {
		say("ERR %v", err)
		return
	}
	say("CONNECTED")
	for in.Scan() {
		if in.Text() == "CHECK" {
			time.Sleep(300 * time.Millisecond) // let any duplicate arrive
			if v := l.check(); v != "" {
				say("CHECK %s", v)
			} else {
				say("CHECK ok")
			}
		}
	}
	// EOF: the parent is done.
}

// listeners is a set of EventSource listeners over raw TCP connections.
type listeners struct {
	n, rounds  int
	want       []string       // the data of each round's message
	got        []atomic.Int32 // [listener*rounds + round]
	count      []atomic.Int64 // deliveries per round
	onDone     func(round int, unixNano int64)
	unexpected atomic.Int64
	badSample  atomic.Value // string

	connected atomic.Int64
	errs      chan error
	mu        sync.Mutex
	stopped   bool
	conns     []net.Conn
	wg        sync.WaitGroup
}

func newListeners(n, rounds int, want []string, onDone func(int, int64)) *listeners {
	return &listeners{
		n: n, rounds: rounds, want: want, onDone: onDone,
		got:   make([]atomic.Int32, n*rounds),
		count: make([]atomic.Int64, rounds),
		errs:  make(chan error, n),
	}
}

// start connects listener i to path on addr (at most cap(sem) at once) and
// reads its events until the connection is closed.
func (l *listeners) start(i int, addr, path, cursor string, sem chan struct{}) {
	l.wg.Go(func() {
		sem <- struct{}{}
		conn, br, err := connect(addr, path, cursor)
		<-sem
		if err != nil {
			l.errs <- fmt.Errorf("listener %d: %w", i, err)
			return
		}
		l.mu.Lock()
		if l.stopped {
			l.mu.Unlock()
			conn.Close()
			return
		}
		l.conns = append(l.conns, conn)
		l.mu.Unlock()
		l.connected.Add(1)
		defer conn.Close()
		for {
			ev, ok := relaytest.ReadEvent(br)
			if !ok {
				return
			}
			r := slices.Index(l.want, ev.Data)
			if r < 0 {
				l.unexpected.Add(1)
				l.badSample.CompareAndSwap(nil, fmt.Sprintf("%+v", ev))
				continue
			}
			l.got[i*l.rounds+r].Add(1)
			if l.count[r].Add(1) == int64(l.n) {
				l.onDone(r, time.Now().UnixNano())
			}
		}
	})
}

// connect opens an EventSource stream and returns a reader of its body.
func connect(addr, path, cursor string) (net.Conn, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: text/event-stream\r\n"
	if cursor != "" {
		req += "Last-Event-ID: " + cursor + "\r\n"
	}
	if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
		conn.Close()
		return nil, nil, err
	}
	hreq, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 1024), hreq)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		conn.Close()
		return nil, nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	conn.SetDeadline(time.Time{})
	return conn, bufio.NewReaderSize(resp.Body, 512), nil
}

// waitConnected waits until every listener has its 200.
func (l *listeners) waitConnected(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for l.connected.Load() < int64(l.n) {
		select {
		case err := <-l.errs:
			return fmt.Errorf("connecting listeners (%d of %d connected): %v", l.connected.Load(), l.n, err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d listeners connected after %v", l.connected.Load(), l.n, timeout)
		}
	}
	return nil
}

// stop closes every connection and waits for the readers.
func (l *listeners) stop() {
	l.mu.Lock()
	l.stopped = true
	for _, c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// check reports "" if every listener got each round's message exactly once
// and nothing else, else what went wrong.
func (l *listeners) check() string {
	var msgs []string
	if n := l.unexpected.Load(); n > 0 {
		msgs = append(msgs, fmt.Sprintf("%d unexpected events, e.g. %v", n, l.badSample.Load()))
	}
	bad := 0
	for i := range l.n {
		for r := range l.rounds {
			if g := l.got[i*l.rounds+r].Load(); g != 1 {
				if bad < 3 {
					msgs = append(msgs, "listener "+strconv.Itoa(i)+" got message "+strconv.Itoa(r)+" "+strconv.Itoa(int(g))+" times")
				}
				bad++
			}
		}
	}
	if bad > 0 {
		msgs = append(msgs, fmt.Sprintf("%d (listener, message) pairs not delivered exactly once", bad))
	}
	return strings.Join(msgs, "; ")
}
