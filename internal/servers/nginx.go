package servers

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// DefaultReadyPath is the request that tells that nginx and Nchan serve:
// any answer but 503 (Redis not connected yet) and a refused connection.
const DefaultReadyPath = "/pub?id=__ready"

// mainContext is what every test config starts with, in the main context:
// the Nchan module, nginx as a child of the test, one worker, the pid file
// in the prefix (see the package documentation). Configs get it as
// {{template "main" .}}.
const mainContext = `load_module {{.Module}};
daemon off;
worker_processes 1;
pid nginx.pid;
`

// tempPaths are the five temp paths, in the prefix, for the http context;
// without them even nginx -t reaches for /var/lib/nginx. Configs get them as
// {{template "temp_paths"}}.
const tempPaths = `  client_body_temp_path client_body_temp;
  proxy_temp_path       proxy_temp;
  fastcgi_temp_path     fastcgi_temp;
  uwsgi_temp_path       uwsgi_temp;
  scgi_temp_path        scgi_temp;
`

// MinimalNchanConf is a working config template: a publisher at /pub?id=
// and /pub/<id>, a subscriber at /sub?id= and /sub/<id> (long-poll,
// EventSource, WebSocket), memory store.
const MinimalNchanConf = mainContext + `error_log error.log info;
events { worker_connections 256; }
http {
  access_log access.log;
` + tempPaths + `  nchan_shared_memory_size 16M;
  server {
    listen {{.Addr}};
    location = /pub      { nchan_publisher;  nchan_channel_id $arg_id; }
    location ~ ^/pub/([^/]+)$ { nchan_publisher;  nchan_channel_id $1; }
    location = /sub      { nchan_subscriber; nchan_channel_id $arg_id; }
    location ~ ^/sub/([^/]+)$ { nchan_subscriber; nchan_channel_id $1; }
  }
}
`

// NginxOptions adjusts [StartNginxWith]. The zero value is what [StartNginx]
// uses.
type NginxOptions struct {
	// Vars are extra template fields: Vars{"Redis": r.Addr} makes
	// {{.Redis}} available. The names Port, Addr, Dir and Module are set by
	// StartNginxWith and may not appear here. Nil means none.
	Vars map[string]any
	// ReadyPath is the path and query polled with GET until the answer is
	// neither a refused connection nor 503. Empty means [DefaultReadyPath];
	// a config whose Redis starts later names a location that does not
	// use Redis (e.g. `location = /ready { return 204; }`).
	ReadyPath string
	// ReadyTimeout bounds each wait for readiness. Zero means 10 s.
	ReadyTimeout time.Duration
}

// Nginx is an nginx master started by [StartNginx]. Its methods are for the
// test goroutine.
type Nginx struct {
	// Addr is "127.0.0.1:<Port>", the address of {{.Addr}}.
	Addr string
	// URL is "http://" + Addr.
	URL string
	// Port is the port of {{.Port}}.
	Port int
	// Ports holds the extra ports that the template asked for with
	// {{port "name"}}, by name; nil if it asked for none.
	Ports map[string]int
	// Dir is the prefix directory: nginx.conf, error.log, access.log,
	// stderr.log, the temp paths.
	Dir string

	t            testing.TB
	bin          string
	readyURL     string
	readyTimeout time.Duration

	mu   sync.Mutex
	proc *process // nil when stopped
}

// StartNginx renders conf as a text/template with {{.Port}}, {{.Addr}},
// {{.Dir}} and {{.Module}} and the function {{port "name"}} (another free
// port, the same one for the same name), writes it to Dir/nginx.conf,
// starts nginx with it and waits until it is ready. The config must say
// `daemon off;`, a relative `pid`, `load_module` and the five *_temp_path
// directives with relative paths (see the package documentation); it fails the
// test otherwise. {{template "main" .}} writes the first four (and one
// worker) in the main context, {{template "temp_paths"}} the temp paths in
// the http context. It skips the test (see [Require]) when nginx or the Nchan
// module is missing and fails it when nginx does not start or become ready;
// the failure quotes error.log and nginx's stderr. nginx is stopped in
// t.Cleanup.
func StartNginx(t testing.TB, conf string) *Nginx {
	t.Helper()
	return StartNginxWith(t, conf, NginxOptions{})
}

// StartNginxWith is [StartNginx] with options.
func StartNginxWith(t testing.TB, conf string, opts NginxOptions) *Nginx {
	t.Helper()
	Require(t, "nginx")
	Require(t, NchanModule)
	bin, _ := lookPath("nginx")

	dir := serverDir(t)
	port := FreePort(t)
	n := &Nginx{
		Addr:         fmt.Sprintf("127.0.0.1:%d", port),
		Port:         port,
		Dir:          dir,
		t:            t,
		bin:          bin,
		readyTimeout: opts.ReadyTimeout,
	}
	n.URL = "http://" + n.Addr
	if n.readyTimeout <= 0 {
		n.readyTimeout = 10 * time.Second
	}
	ready := opts.ReadyPath
	if ready == "" {
		ready = DefaultReadyPath
	}
	n.readyURL = n.URL + ready

	data := map[string]any{"Port": port, "Addr": n.Addr, "Dir": dir, "Module": NchanModule}
	for k, v := range opts.Vars {
		if _, taken := data[k]; taken {
			t.Fatalf("servers: template field %q is set by StartNginx", k)
		}
		data[k] = v
	}
	tmpl, err := template.New("nginx.conf").Option("missingkey=error").Funcs(template.FuncMap{
		"port": func(name string) int {
			if p, ok := n.Ports[name]; ok {
				return p
			}
			if n.Ports == nil {
				n.Ports = make(map[string]int)
			}
			n.Ports[name] = FreePort(t)
			return n.Ports[name]
		},
	}).Parse(conf)
	if err == nil {
		_, err = tmpl.New("main").Parse(mainContext)
	}
	if err == nil {
		_, err = tmpl.New("temp_paths").Parse(tempPaths)
	}
	if err != nil {
		t.Fatalf("servers: nginx config template: %v", err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, data); err != nil {
		t.Fatalf("servers: nginx config template: %v", err)
	}
	if err := checkConf(buf.String()); err != nil {
		t.Fatalf("servers: nginx config: %v", err)
	}
	if err := os.WriteFile(n.conf(), buf.Bytes(), 0o644); err != nil {
		t.Fatalf("servers: %v", err)
	}

	t.Cleanup(n.Stop)
	n.Start()
	return n
}

func (n *Nginx) conf() string { return filepath.Join(n.Dir, "nginx.conf") }

// requiredDirectives are what keeps nginx a child of the test (daemon off;
// a daemon would outlive it) and inside the prefix (pid and temp paths;
// otherwise /run/nginx.pid and /var/lib/nginx/*), as patterns on whole lines.
var requiredDirectives = func() map[string]*regexp.Regexp {
	m := map[string]*regexp.Regexp{
		"daemon off;":    regexp.MustCompile(`(?m)^\s*daemon\s+off\s*;`),
		"load_module":    regexp.MustCompile(`(?m)^\s*load_module\s`),
		"a relative pid": regexp.MustCompile(`(?m)^\s*pid\s+[^/\s]`),
	}
	for _, p := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		m["a relative "+p+"_temp_path"] = regexp.MustCompile(`(?m)^\s*` + p + `_temp_path\s+[^/\s]`)
	}
	return m
}()

// checkConf refuses a config that lacks a directive that running nginx from
// a temporary prefix requires (see the package documentation).
func checkConf(conf string) error {
	var missing []string
	for what, re := range requiredDirectives {
		if !re.MatchString(conf) {
			missing = append(missing, what)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("missing %s (see MinimalNchanConf)", strings.Join(missing, ", "))
	}
	return nil
}

// Start starts nginx again with the same config, prefix and ports after
// [Nginx.Stop] or [Nginx.Kill], and waits until it is ready. It fails the
// test if nginx is running.
func (n *Nginx) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		n.t.Fatalf("servers: nginx on %s is already running", n.Addr)
	}
	stderr, err := os.OpenFile(filepath.Join(n.Dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatalf("servers: %v", err)
	}
	defer stderr.Close() // the child has its own descriptor
	cmd := exec.Command(n.bin, "-e", "stderr", "-p", n.Dir, "-c", n.conf())
	cmd.Dir = n.Dir
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	p, err := startProcess(cmd)
	if err != nil {
		n.t.Fatalf("servers: starting nginx: %v", err)
	}
	n.proc = p
	if err := n.waitReady(p); err != nil {
		p.kill(func() []int { return childrenOf(p.cmd.Process.Pid) })
		n.proc = nil
		n.t.Fatalf("servers: nginx on %s: %v\n--- error.log:\n%s\n--- stderr:\n%s",
			n.Addr, err, tail(filepath.Join(n.Dir, "error.log"), 4000), tail(filepath.Join(n.Dir, "stderr.log"), 4000))
	}
}

// waitReady polls the ready URL with GET until the answer is not 503.
func (n *Nginx) waitReady(p *process) error {
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(n.readyTimeout)
	var last string
	for {
		resp, err := client.Get(n.readyURL)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if p.exited() {
			return fmt.Errorf("nginx exited: %v", p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: GET %s: %s", n.readyTimeout, n.readyURL, last)
		}
		select {
		case <-p.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop stops nginx gracefully (SIGQUIT: listeners get what a DELETE gives
// them) and waits; after [GracefulTimeout] it sends SIGTERM, and after
// [StopTimeout] it kills the master and its workers. Stopping a stopped
// nginx does nothing.
func (n *Nginx) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return
	}
	p := n.proc
	n.proc = nil
	sig, err := p.stop([]stopStep{{syscall.SIGQUIT, GracefulTimeout}, {syscall.SIGTERM, StopTimeout - GracefulTimeout}},
		func() []int { return childrenOf(p.cmd.Process.Pid) })
	switch {
	case err != nil:
		n.t.Errorf("servers: nginx on %s %v", n.Addr, err)
	case sig != syscall.SIGQUIT:
		n.t.Logf("servers: nginx on %s ignored SIGQUIT for %v (idle keep-alive connections?); stopped with %v", n.Addr, GracefulTimeout, sig)
	}
}

// Kill stops nginx at once with SIGKILL to the master and its workers, as a
// crash would. Killing a stopped nginx does nothing.
func (n *Nginx) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return
	}
	p := n.proc
	n.proc = nil
	p.kill(func() []int { return childrenOf(p.cmd.Process.Pid) })
}

// PID returns the master's process ID, or 0 if nginx is stopped.
func (n *Nginx) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return 0
	}
	return n.proc.cmd.Process.Pid
}

// WorkerPID returns the process ID of nginx's worker (the lowest, if the
// config starts several): a child of the master, found through /proc. It
// waits up to 5 s for one to exist, as after a worker crash the master
// starts a new one, and fails the test if none does or nginx is stopped.
func (n *Nginx) WorkerPID() int {
	n.t.Helper()
	master := n.PID()
	if master == 0 {
		n.t.Fatalf("servers: nginx on %s is stopped", n.Addr)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if kids := childrenOf(master); len(kids) > 0 {
			lowest := kids[0]
			for _, k := range kids[1:] {
				lowest = min(lowest, k)
			}
			return lowest
		}
		if time.Now().After(end) {
			n.t.Fatalf("servers: nginx master %d has no worker", master)
		}
	}
}

// ErrorLog returns the content of Dir/error.log (the config's
// `error_log error.log ...`), or a note saying why it cannot be read.
func (n *Nginx) ErrorLog() string {
	b, err := os.ReadFile(filepath.Join(n.Dir, "error.log"))
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}
