package servers

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// NchanModule is the path of the Nchan dynamic module of Debian's
// libnginx-mod-nchan; configs load it with `load_module {{.Module}};`.
const NchanModule = "/usr/lib/nginx/modules/ngx_nchan_module.so"

// RequireEnv names the environment variable that turns [Require]'s skip into
// a failure when set to "1".
const RequireEnv = "SESSIONPUSH_REQUIRE_SERVERS"

// StopTimeout bounds how long Stop waits for a process to exit before it
// sends SIGKILL.
const StopTimeout = 10 * time.Second

// GracefulTimeout is how long [Nginx.Stop] waits after SIGQUIT before it
// sends SIGTERM. nginx 1.22 with Nchan does not close idle keep-alive
// connections on SIGQUIT once a few dozen are open (64 clients that stay
// connected keep it running until they leave); SIGTERM closes them.
const GracefulTimeout = 3 * time.Second

// Require skips the test when binary is missing: a command name looked up in
// PATH (and /usr/sbin, /sbin, where nginx lives when PATH lacks them), or a
// file path such as [NchanModule]. When the environment variable [RequireEnv]
// is "1" it fails the test instead.
func Require(t testing.TB, binary string) {
	t.Helper()
	if _, err := lookPath(binary); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("servers: %s is required (%s=1) but missing: %v", binary, RequireEnv, err)
		}
		t.Skipf("servers: %s is missing (%v); install it, or set %s=1 to fail instead of skipping", binary, err, RequireEnv)
	}
}

// lookPath finds a command in PATH or in the sbin directories, or checks
// that a path names an existing regular file.
func lookPath(binary string) (string, error) {
	if strings.Contains(binary, "/") {
		fi, err := os.Stat(binary)
		if err != nil {
			return "", err
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("%s is not a regular file", binary)
		}
		return binary, nil
	}
	if p, err := exec.LookPath(binary); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, binary)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH, /usr/sbin or /sbin", binary)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// a server that a test starts later. It picks at random below the kernel's
// ephemeral range (where outgoing connections take their local ports, so
// that the many clients of tests running beside it cannot take the port
// meanwhile), checks that it can listen there and closes the listener; it
// falls back to a port from the kernel (listening on port 0).
func FreePort(t testing.TB) int {
	t.Helper()
	low := ephemeralLow()
	for range 50 {
		if low <= minPort {
			break
		}
		port := minPort + rand.IntN(low-minPort)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			ln.Close()
			return port
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("servers: finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// minPort is the lowest port FreePort picks: above the registered services
// that a test machine may run.
const minPort = 20000

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// ip_local_port_range; 32768, its default, elsewhere).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

// serverDir makes a t.TempDir() that processes running as another user (nginx
// workers run as nobody when the test runs as root) can enter and read.
func serverDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("servers: chmod %s: %v", d, err)
		}
	}
	return dir
}

// process is one child process and the channel closed when it has exited.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done is closed
}

func startProcess(cmd *exec.Cmd) (*process, error) {
	// If the test binary dies without running its cleanups (a panic, a
	// go test -timeout), the kernel kills the child. For nginx that is the
	// master only: orphaned workers stay until killed by hand.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends each signal in turn and waits for the process up to its
// timeout; if it is still there, it kills the process and the extra PIDs
// that children() lists at that moment. It returns the signal that ended
// the process, or an error if SIGKILL had to.
func (p *process) stop(steps []stopStep, children func() []int) (syscall.Signal, error) {
	for _, st := range steps {
		if p.exited() {
			return st.sig, nil
		}
		_ = p.cmd.Process.Signal(st.sig)
		select {
		case <-p.done:
			return st.sig, nil
		case <-time.After(st.wait):
		}
	}
	p.kill(children)
	return syscall.SIGKILL, fmt.Errorf("did not exit within %v; killed", StopTimeout)
}

type stopStep struct {
	sig  syscall.Signal
	wait time.Duration
}

// kill sends SIGKILL to the process and to children() (collected first, while
// their parent still exists), and waits for the process.
func (p *process) kill(children func() []int) {
	var kids []int
	if children != nil {
		kids = children()
	}
	_ = p.cmd.Process.Kill()
	for _, pid := range kids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	<-p.done
	for _, pid := range kids {
		waitGone(pid, 2*time.Second)
	}
}

// childrenOf lists the PIDs whose parent is ppid, from /proc/<pid>/stat.
func childrenOf(ppid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, err := parentOf(pid); err == nil && pp == ppid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// parentOf reads the parent PID from /proc/<pid>/stat: "pid (comm) state ppid ...".
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, errors.New("malformed stat")
	}
	return strconv.Atoi(f[1])
}

// waitGone waits until /proc/<pid> disappears or is a zombie, up to d.
func waitGone(pid int, d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z") {
			return
		}
	}
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on
// Linux (x86, arm64).
const clockTick = 100

// ProcCPU returns the user and system CPU time of process pid, all its
// threads, from /proc/<pid>/stat (in clock ticks of 10 ms).
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// Memory is a process's memory, in bytes: resident (VmRSS), and of that
// the Go heap and goroutine stacks in use.
type Memory struct{ RSS, Heap, Stack float64 }

// SelfMemory returns this process's Memory, after a collection that
// returns freed memory to the system.
func SelfMemory() (Memory, error) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	kb, err := ProcStatus("self", "VmRSS")
	if err != nil {
		return Memory{}, err
	}
	return Memory{RSS: float64(kb) * 1024, Heap: float64(ms.HeapInuse), Stack: float64(ms.StackInuse)}, nil
}

// ProcStatus returns a field of /proc/<pid>/status that is counted in KiB,
// such as "VmRSS" (resident memory); pid "self" is the calling process.
func ProcStatus(pid, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%s/status: no %s", pid, field)
}
