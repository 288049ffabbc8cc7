package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
)

// The relays that the example runs on, and the client's transports.
var (
	relays     = []string{"embedded", "nchan"}
	transports = []string{"websocket", "eventsource", "longpoll"}
)

// eachRow runs f as a subtest "<relay>/<transport>" for every relay and
// transport, one after the other.
func eachRow(t *testing.T, f func(t *testing.T, relay, transport string)) {
	needBrowser(t)
	for _, relay := range relays {
		for _, transport := range transports {
			t.Run(relay+"/"+transport, func(t *testing.T) { f(t, relay, transport) })
		}
	}
}

// site is the example as a browser reaches it: on the embedded relay, the
// program itself; on Nchan, nginx with the shipped config in front of the
// program, which publishes to Nchan.
type site struct {
	t     *testing.T
	relay string
	URL   string         // what the browser opens
	app   *app           // the example program
	nginx *servers.Nginx // nil on the embedded relay
}

// startSite starts the example on relay, with args as further flags.
// origin is the origin of the pages that will open WebSockets, "host:port",
// when it is not the site's own address (a network in between): Nchan's
// config only lets that origin in.
func startSite(t *testing.T, relay, origin string, args ...string) *site {
	t.Helper()
	s := &site{t: t, relay: relay}
	key := make([]byte, 32)
	rand.Read(key)
	// A fixed session key, so that sessions survive a restart of the program.
	// alice, who broadcasts in the tests, is the -admin.
	keyArg := append([]string{"-session-key", hex.EncodeToString(key), "-admin", "alice"}, args...)
	switch relay {
	case "embedded":
		s.app = startApp(t, fmt.Sprintf("127.0.0.1:%d", servers.FreePort(t)), keyArg...)
		s.URL = s.app.scheme() + "://" + s.app.addr
	case "nchan":
		s.nginx = servers.StartNginxWith(t, nginxConf(t, origin), servers.NginxOptions{ReadyPath: "/pub/" + newUUID()})
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("nginx error.log:\n%s", tail(s.nginx.ErrorLog(), 3000))
			}
		})
		s.app = startApp(t, fmt.Sprintf("127.0.0.1:%d", s.nginx.Ports["app"]), append(keyArg,
			"-publish-url", fmt.Sprintf("http://127.0.0.1:%d/pub/{channel}", s.nginx.Ports["pub"]), "-subscribe-url", "/sub/{channel}")...)
		s.URL = s.nginx.URL
		waitHTTP(t, s.URL+"/client.js", nil) // through nginx
	default:
		t.Fatalf("unknown relay %q", relay)
	}
	return s
}

// stopRelay stops what holds the channels: the program (embedded relay) or
// nginx (Nchan). Both lose every channel and message: memory stores.
func (s *site) stopRelay() {
	s.t.Helper()
	if s.nginx != nil {
		s.nginx.Stop()
	} else {
		s.app.stop()
	}
}

// startRelay starts it again on the same address.
func (s *site) startRelay() {
	s.t.Helper()
	if s.nginx != nil {
		s.nginx.Start()
	} else {
		s.app.start()
	}
}

// The addresses in ../example/nginx/nginx.conf that the tests replace.
const (
	shippedConf      = "../example/nginx/nginx.conf"
	shippedListen    = "listen 127.0.0.1:8081;"
	shippedPubListen = "listen 127.0.0.1:8091;" // the publisher's loopback server
	shippedOrigin    = "127.0.0.1:8081"         // also in nchan_access_control_allow_origin
	shippedUpstream  = "server 127.0.0.1:8080;"
)

// nginxConf returns the shipped config as a template for
// servers.StartNginxWith, as example/nginx_test.go does: nginx listens on
// {{.Addr}}, its publisher server on {{port "pub"}}, the app on
// {{port "app"}}, and the other mentions of nginx's
// address (the allowed Origin) name origin, or {{.Addr}} when it is empty.
func nginxConf(t *testing.T, origin string) string {
	t.Helper()
	b, err := os.ReadFile(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, want := range []string{shippedListen, shippedPubListen, shippedUpstream, "nchan_access_control_allow_origin http://" + shippedOrigin + ";"} {
		if !strings.Contains(conf, want) {
			t.Fatalf("%s lacks %q: the tests replace its addresses", shippedConf, want)
		}
	}
	if strings.Contains(conf, "{{") {
		t.Fatalf("%s contains {{: the tests render it as a template", shippedConf)
	}
	if origin == "" {
		origin = "{{.Addr}}"
	}
	conf = strings.ReplaceAll(conf, shippedListen, "listen {{.Addr}};")
	conf = strings.ReplaceAll(conf, shippedPubListen, `listen 127.0.0.1:{{port "pub"}};`)
	conf = strings.ReplaceAll(conf, shippedUpstream, `server 127.0.0.1:{{port "app"}};`)
	return strings.ReplaceAll(conf, shippedOrigin, origin)
}

// app is the example program, run as a child process.
type app struct {
	t    *testing.T
	addr string
	args []string
	out  syncBuffer // what every run printed

	cmd    *exec.Cmd // nil when stopped
	exited chan struct{}
	err    error // of cmd.Wait, once exited is closed
}

// startApp runs the example on addr with args until the test ends.
func startApp(t *testing.T, addr string, args ...string) *app {
	t.Helper()
	a := &app{t: t, addr: addr, args: args}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("example output:\n%s", tail(a.out.String(), 6000))
		}
	})
	a.start()
	return a
}

// scheme is "https" when the program serves HTTPS (-tls-self-signed),
// else "http".
func (a *app) scheme() string {
	for _, arg := range a.args {
		if arg == "-tls-self-signed" {
			return "https"
		}
	}
	return "http"
}

// start starts the program and waits until it serves.
func (a *app) start() {
	a.t.Helper()
	if a.cmd != nil {
		a.t.Fatal("the example is already running")
	}
	cmd := exec.Command(exampleBin, append([]string{"-addr", a.addr}, a.args...)...)
	cmd.Stdout = &a.out
	cmd.Stderr = &a.out
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	go func() {
		a.err = cmd.Wait()
		close(a.exited)
	}()
	waitHTTP(a.t, a.scheme()+"://"+a.addr+"/client.js", a.exited)
}

// stop stops the program with SIGINT, as Ctrl-C does, and waits for it: it
// ends its listeners and shuts down gracefully. A non-zero exit (a data
// race under -race exits 66) fails the test.
func (a *app) stop() {
	a.t.Helper()
	if a.cmd == nil {
		return
	}
	cmd := a.cmd
	a.cmd = nil
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-a.exited
		a.t.Errorf("the example did not stop within 15 s of SIGINT")
		return
	}
	if a.err != nil {
		a.t.Errorf("the example exited: %v\n%s", a.err, tail(a.out.String(), 6000))
	}
}

// waitHTTP polls url until it answers 200, for up to 10 s, or until exited
// is closed (the process serving it ended). Over https it takes any
// certificate: the program's is self-signed.
func waitHTTP(t *testing.T, url string, exited <-chan struct{}) {
	t.Helper()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	var last string
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: not ready after 10 s: %s", url, last)
		}
		select {
		case <-exited:
			t.Fatalf("GET %s: the server exited: %s", url, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// network is a TCP relay between the browser and a site that the test can
// cut, as a dropped Wi-Fi would: cut closes every connection and refuses
// new ones (accepts and closes them at once) until restore.
type network struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu      sync.Mutex
	down    bool
	refused int // connections refused while down
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// newNetwork listens on a free port; connect names the site behind it.
func newNetwork(t *testing.T) *network {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &network{t: t, ln: ln, conns: map[net.Conn]bool{}}
	t.Cleanup(n.close)
	return n
}

// Addr is the "host:port" that browsers connect to.
func (n *network) Addr() string { return n.ln.Addr().String() }

// connect starts relaying connections to target ("host:port").
func (n *network) connect(target string) {
	n.target = target
	n.wg.Add(1)
	go n.serve()
}

func (n *network) serve() {
	defer n.wg.Done()
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return // closed
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.relay(c)
		}()
	}
}

func (n *network) relay(c net.Conn) {
	if !n.track(c) {
		n.mu.Lock()
		n.refused++
		n.mu.Unlock()
		c.Close()
		return
	}
	defer n.untrack(c)
	s, err := net.DialTimeout("tcp", n.target, 2*time.Second)
	if err != nil {
		return
	}
	if !n.track(s) {
		s.Close()
		return
	}
	defer n.untrack(s)
	done := make(chan struct{}, 2)
	go func() { io.Copy(s, c); done <- struct{}{} }()
	go func() { io.Copy(c, s); done <- struct{}{} }()
	<-done // either side ended: end both
	c.Close()
	s.Close()
	<-done
}

// track registers c unless the network is down.
func (n *network) track(c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.down {
		return false
	}
	n.conns[c] = true
	return true
}

func (n *network) untrack(c net.Conn) {
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
	c.Close()
}

// cut closes every connection and refuses new ones.
func (n *network) cut() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.down = true
	for c := range n.conns {
		c.Close()
	}
}

// refusals returns how many connections the network refused while down:
// a client's attempts to reconnect during a cut.
func (n *network) refusals() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.refused
}

// restore lets connections through again.
func (n *network) restore() {
	n.mu.Lock()
	n.down = false
	n.mu.Unlock()
}

func (n *network) close() {
	n.ln.Close()
	n.cut()
	n.wg.Wait()
}

// syncBuffer is a bytes.Buffer for several writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// newUUID returns a random version 4 UUID, the form of the kit's channel IDs.
func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
