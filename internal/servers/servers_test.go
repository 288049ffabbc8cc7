package servers

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// alive reports whether pid exists and is not a zombie (a killed worker whose
// master is gone waits for init to reap it).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z")
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func post(t *testing.T, url, body string) int {
	t.Helper()
	resp, err := http.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func TestNginxPublishAndReadBack(t *testing.T) {
	n := StartNginx(t, MinimalNchanConf)
	if !strings.HasPrefix(n.URL, "http://127.0.0.1:") || n.Addr != "127.0.0.1:"+strconv.Itoa(n.Port) {
		t.Fatalf("URL %q, Addr %q, Port %d", n.URL, n.Addr, n.Port)
	}
	if code := post(t, n.URL+"/pub?id=hello", "first message"); code != http.StatusAccepted {
		t.Fatalf("POST /pub: %d, want 202", code)
	}
	code, body := get(t, n.URL+"/sub?id=hello")
	if code != http.StatusOK || body != "first message" {
		t.Fatalf("GET /sub: %d %q, want 200 %q", code, body, "first message")
	}
	code, body = get(t, n.URL+"/pub/hello")
	if code != http.StatusOK || !strings.Contains(body, "queued messages: 1") {
		t.Fatalf("GET /pub/hello: %d %q, want 200 with one queued message", code, body)
	}
}

func TestNginxStopStartSamePort(t *testing.T) {
	n := StartNginx(t, MinimalNchanConf)
	master, worker := n.PID(), n.WorkerPID()
	if post(t, n.URL+"/pub?id=before", "x") != http.StatusAccepted {
		t.Fatal("publish before stop failed")
	}

	n.Stop()
	if n.PID() != 0 {
		t.Fatalf("PID after Stop = %d, want 0", n.PID())
	}
	if _, err := net.DialTimeout("tcp", n.Addr, time.Second); err == nil {
		t.Fatalf("%s still accepts connections after Stop", n.Addr)
	}
	for _, pid := range []int{master, worker} {
		if alive(pid) {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
	n.Stop() // stopping twice is harmless

	n.Start()
	if n.PID() == 0 || n.PID() == master {
		t.Fatalf("PID after Start = %d (was %d)", n.PID(), master)
	}
	// The memory store starts empty again.
	if code, _ := get(t, n.URL+"/pub?id=before"); code != http.StatusNotFound {
		t.Fatalf("GET old channel after restart: %d, want 404", code)
	}
	if post(t, n.URL+"/pub?id=after", "y") != http.StatusAccepted {
		t.Fatal("publish after restart failed")
	}
}

func TestNginxKill(t *testing.T) {
	n := StartNginx(t, MinimalNchanConf)
	master, worker := n.PID(), n.WorkerPID()
	n.Kill()
	for _, pid := range []int{master, worker} {
		if alive(pid) {
			t.Errorf("process %d still runs after Kill", pid)
		}
	}
	n.Start()
	if code, _ := get(t, n.URL+"/pub?id=x"); code != http.StatusNotFound {
		t.Fatalf("GET after Kill and Start: %d, want 404", code)
	}
}

func TestNginxWorkerPID(t *testing.T) {
	n := StartNginx(t, MinimalNchanConf)
	w := n.WorkerPID()
	if pp, err := parentOf(w); err != nil || pp != n.PID() {
		t.Fatalf("worker %d has parent %d (%v), want master %d", w, pp, err, n.PID())
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", w))
	if err != nil || !strings.Contains(string(cmdline), "worker process") {
		t.Fatalf("worker %d cmdline %q (%v), want an nginx worker", w, cmdline, err)
	}
	// A crashed worker is replaced; WorkerPID finds the new one.
	if err := syscall.Kill(w, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(w, 5*time.Second)
	var w2 int
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if w2 = n.WorkerPID(); w2 != w || time.Now().After(end) {
			break
		}
	}
	if w2 == w {
		t.Fatalf("WorkerPID still %d after that worker was killed", w)
	}
}

func TestNginxTemplateVarsAndPorts(t *testing.T) {
	conf := strings.Replace(MinimalNchanConf, "  server {", `  server {
    listen 127.0.0.1:{{port "second"}};
    location = /hello { return 200 "{{.Greeting}} {{port "second"}}"; }
  }
  server {`, 1)
	n := StartNginxWith(t, conf, NginxOptions{Vars: map[string]any{"Greeting": "hi"}})
	second := n.Ports["second"]
	if second == 0 || second == n.Port {
		t.Fatalf("Ports = %v, want a second port besides %d", n.Ports, n.Port)
	}
	code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/hello", second))
	if want := fmt.Sprintf("hi %d", second); code != 200 || body != want {
		t.Fatalf("GET /hello on the second port: %d %q, want 200 %q", code, body, want)
	}
	// The rendered config is kept, so a restart listens on both ports again.
	n.Stop()
	n.Start()
	if code, _ := get(t, fmt.Sprintf("http://127.0.0.1:%d/hello", second)); code != 200 {
		t.Fatalf("second port after restart: %d", code)
	}
}

// recorder is a testing.TB whose Fatal and Skip end only the goroutine
// running the helper, so that a test can check how a helper fails.
type recorder struct {
	testing.TB
	mu      sync.Mutex
	failed  bool
	skipped bool
	msg     string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.mu.Lock()
	r.skipped, r.msg = true, fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recorder) Skip(args ...any)  { r.Skipf("%s", fmt.Sprint(args...)) }

func record(t *testing.T, fn func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

func TestNginxNotReadyReportsErrorLog(t *testing.T) {
	Require(t, "nginx")
	Require(t, NchanModule)
	conf := strings.Replace(MinimalNchanConf, "location = /pub ", "location = /down { return 503; }\n    location = /pub ", 1)
	start := time.Now()
	r := record(t, func(tb testing.TB) {
		StartNginxWith(tb, conf, NginxOptions{ReadyPath: "/down", ReadyTimeout: 500 * time.Millisecond})
	})
	if !r.failed {
		t.Fatal("StartNginxWith did not fail although the ready path always answers 503")
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("failing took %v, want about the 500ms ReadyTimeout", time.Since(start))
	}
	for _, want := range []string{"503", "error.log", "start worker process"} {
		if !strings.Contains(r.msg, want) {
			t.Errorf("failure message lacks %q:\n%s", want, r.msg)
		}
	}
}

func TestNginxBadConfigFailsFast(t *testing.T) {
	Require(t, "nginx")
	Require(t, NchanModule)
	conf := strings.Replace(MinimalNchanConf, "worker_processes 1;", "worker_processes 1;\nno_such_directive on;", 1)
	start := time.Now()
	r := record(t, func(tb testing.TB) { StartNginx(tb, conf) })
	if !r.failed || !strings.Contains(r.msg, "unknown directive") || !strings.Contains(r.msg, "exited") {
		t.Fatalf("failed=%v, message:\n%s\nwant a failure quoting nginx's \"unknown directive\"", r.failed, r.msg)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("failing took %v, want no wait for the ready timeout", time.Since(start))
	}
}

func TestNginxConfigChecked(t *testing.T) {
	if err := checkConf(MinimalNchanConf); err != nil {
		t.Fatalf("MinimalNchanConf: %v", err)
	}
	for _, drop := range []string{"daemon off;", "pid nginx.pid;", "  scgi_temp_path        scgi_temp;"} {
		if err := checkConf(strings.Replace(MinimalNchanConf, drop, "", 1)); err == nil {
			t.Errorf("a config without %q passed", drop)
		}
	}
	if err := checkConf(strings.Replace(MinimalNchanConf, "pid nginx.pid;", "pid /run/nginx.pid;", 1)); err == nil {
		t.Error("an absolute pid path passed")
	}
	Require(t, "nginx")
	r := record(t, func(tb testing.TB) { StartNginx(tb, strings.Replace(MinimalNchanConf, "daemon off;", "", 1)) })
	if !r.failed || !strings.Contains(r.msg, "daemon off;") {
		t.Errorf("StartNginx with a daemonizing config: failed=%v %q", r.failed, r.msg)
	}
}

func TestRequire(t *testing.T) {
	const missing = "/nonexistent/sessionpush-no-such-binary"
	t.Setenv(RequireEnv, "")
	if r := record(t, func(tb testing.TB) { Require(tb, missing) }); !r.skipped || r.failed || !strings.Contains(r.msg, missing) {
		t.Errorf("without %s: skipped=%v failed=%v %q, want a skip naming the binary", RequireEnv, r.skipped, r.failed, r.msg)
	}
	t.Setenv(RequireEnv, "1")
	if r := record(t, func(tb testing.TB) { Require(tb, missing) }); !r.failed || r.skipped {
		t.Errorf("with %s=1: skipped=%v failed=%v, want a failure", RequireEnv, r.skipped, r.failed)
	}
	if r := record(t, func(tb testing.TB) { Require(tb, "sh") }); r.failed || r.skipped {
		t.Errorf("Require(sh) stopped the test: %q", r.msg)
	}
}

// rawPing speaks RESP over a plain TCP connection.
func rawPing(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestRedisPingStopStart(t *testing.T) {
	r := StartRedis(t)
	if got, err := rawPing(r.Addr); err != nil || got != "+PONG\r\n" {
		t.Fatalf("PING: %q, %v; want +PONG", got, err)
	}
	r.Stop()
	if _, err := rawPing(r.Addr); err == nil {
		t.Fatalf("Redis on %s still answers after Stop", r.Addr)
	}
	r.Start()
	if got, err := rawPing(r.Addr); err != nil || got != "+PONG\r\n" {
		t.Fatalf("PING after Start: %q, %v; want +PONG", got, err)
	}
}

func TestNewRedisStartsLater(t *testing.T) {
	r := NewRedis(t)
	if _, err := rawPing(r.Addr); err == nil {
		t.Fatal("NewRedis started Redis")
	}
	r.Start()
	if got, err := rawPing(r.Addr); err != nil || got != "+PONG\r\n" {
		t.Fatalf("PING: %q, %v", got, err)
	}
}

// nginx with Nchan ignores SIGQUIT while many idle keep-alive connections are
// open; Stop must still end it, with SIGTERM, well before StopTimeout.
func TestNginxStopWithIdleKeepAlive(t *testing.T) {
	n := StartNginx(t, MinimalNchanConf)
	master, worker := n.PID(), n.WorkerPID()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	defer hc.CloseIdleConnections()
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			resp, err := hc.Post(fmt.Sprintf("%s/pub?id=ka%d", n.URL, i), "text/plain", strings.NewReader("x"))
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
	start := time.Now()
	n.Stop()
	if d := time.Since(start); d > GracefulTimeout+2*time.Second {
		t.Errorf("Stop took %v with idle keep-alive connections open", d)
	}
	for _, pid := range []int{master, worker} {
		if alive(pid) {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
}

// TestFreePortBelowEphemeral: FreePort's port can be listened on and lies
// outside the range the kernel gives outgoing connections.
func TestFreePortBelowEphemeral(t *testing.T) {
	low := ephemeralLow()
	for range 20 {
		p := FreePort(t)
		if low > minPort && (p < minPort || p >= low) {
			t.Fatalf("FreePort = %d; want one in [%d, %d)", p, minPort, low)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("listening on FreePort's %d: %v", p, err)
		}
		ln.Close()
	}
}
