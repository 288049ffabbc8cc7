package servers

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server for one test, made by [StartRedis] or [NewRedis].
// Start is for the test goroutine; TryStart and Stop may be called from any.
type Redis struct {
	// Addr is "127.0.0.1:<Port>".
	Addr string
	// Port is the port Redis listens on, the same after every Start.
	Port int
	// Dir is Redis's working directory; redis.log is its log.
	Dir string

	t   testing.TB
	bin string

	mu   sync.Mutex
	proc *process // nil when stopped
}

// StartRedis starts a redis-server on a free port without persistence and
// waits until it answers PING. It skips the test (see [Require]) when
// redis-server is missing. Redis is stopped in t.Cleanup.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := NewRedis(t)
	r.Start()
	return r
}

// NewRedis chooses a free port and a directory for a redis-server without
// starting it, so that a test can point nginx at Redis first and call
// [Redis.Start] later. It skips the test when redis-server is missing.
// Whatever runs when the test ends is stopped in t.Cleanup.
func NewRedis(t testing.TB) *Redis {
	t.Helper()
	Require(t, "redis-server")
	bin, _ := lookPath("redis-server")
	dir := serverDir(t)
	port := FreePort(t)
	r := &Redis{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, Dir: dir, t: t, bin: bin}
	t.Cleanup(r.Stop)
	return r
}

// Start starts redis-server on r.Port and waits up to 10 s for it to answer
// PING. It fails the test if Redis is running already or does not start.
func (r *Redis) Start() {
	r.t.Helper()
	if err := r.TryStart(); err != nil {
		r.t.Fatal(err)
	}
}

// TryStart is [Redis.Start] returning the failure instead of failing the
// test, for use from another goroutine (a test that starts Redis while a
// client is already waiting for it).
func (r *Redis) TryStart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		return fmt.Errorf("servers: redis on %s is already running", r.Addr)
	}
	logPath := filepath.Join(r.Dir, "redis.log")
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.Dir,
		"--daemonize", "no", "--logfile", logPath)
	cmd.Dir = r.Dir
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("servers: starting redis-server: %w", err)
	}
	r.proc = p
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(r.Addr)
		if err == nil {
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			p.kill(nil)
			r.proc = nil
			return fmt.Errorf("servers: redis on %s not ready: %v (exited: %v)\n--- redis.log:\n%s",
				r.Addr, err, p.exited(), tail(logPath, 4000))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop stops Redis (SIGTERM) and waits; after [StopTimeout] it kills it.
// Its data are lost. Stopping a stopped Redis does nothing.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return
	}
	p := r.proc
	r.proc = nil
	if _, err := p.stop([]stopStep{{syscall.SIGTERM, StopTimeout}}, nil); err != nil {
		r.t.Errorf("servers: redis on %s %v", r.Addr, err)
	}
}

// ping sends PING in RESP and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
