package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
)

// update rewrites nginx/cluster/*.conf from nginx/nginx.conf:
//
//	go test ./example -run TestClusterConfigsInSync -update
var update = flag.Bool("update", false, "rewrite nginx/cluster/*.conf from nginx/nginx.conf")

// clusterRedis is the Redis of both cluster nodes, and clusterNamespace
// their nchan_redis_namespace.
const (
	clusterRedis     = "127.0.0.1:6379"
	clusterNamespace = "sessionpush"
)

// clusterNode is one nginx+Nchan node of nginx/cluster/: nginx on listen,
// in front of the app on app, with its publisher server on publisher.
type clusterNode struct {
	file, listen, publisher, app string
}

var clusterNodes = []clusterNode{
	{"nginx/cluster/node1.conf", "127.0.0.1:8081", "127.0.0.1:8091", "127.0.0.1:8080"},
	{"nginx/cluster/node2.conf", "127.0.0.1:8083", "127.0.0.1:8093", "127.0.0.1:8082"},
}

// clusterHeader replaces the shipped config's header comment (everything
// before load_module) in each node's file.
const clusterHeader = `# GENERATED from ../nginx.conf by TestClusterConfigsInSync (example/cluster_test.go):
# do not edit. Change ../nginx.conf, then run
#   go test ./example -run TestClusterConfigsInSync -update
#
# The sessionpush example scaled out: two app instances and two nginx + Nchan nodes,
# sharing one Redis (docs/scaling.md).  This file is node %d:
# http://%s/ in front of the app on %s, the publisher on %s.
#   node 1: nginx 127.0.0.1:8081 -> app 127.0.0.1:8080, publisher 127.0.0.1:8091   (cluster/node1.conf)
#   node 2: nginx 127.0.0.1:8083 -> app 127.0.0.1:8082, publisher 127.0.0.1:8093   (cluster/node2.conf)
# Both nodes keep Nchan's channels, buffers and listener counts in the Redis at
# %s (namespace %s); both apps keep their open channels there (-redis)
# and sign cookies with one -session-key, so a session may sign in, listen and push
# through either node.  From the repository root, in one shell:
#
#   redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no &
#   K=$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')
#   B=b0adca57-0000-4000-8000-000000000000
#   go run ./example -addr 127.0.0.1:8080 -redis 127.0.0.1:6379 -session-key $K -broadcast-channel $B -admin alice \
#     -publish-url 'http://127.0.0.1:8091/pub/{channel}' -subscribe-url '/sub/{channel}' &
#   go run ./example -addr 127.0.0.1:8082 -redis 127.0.0.1:6379 -session-key $K -broadcast-channel $B -admin alice \
#     -publish-url 'http://127.0.0.1:8093/pub/{channel}' -subscribe-url '/sub/{channel}' &
#   nginx -e stderr -p "$(mktemp -d)" -c "$PWD/example/nginx/cluster/node1.conf" &
#   nginx -e stderr -p "$(mktemp -d)" -c "$PWD/example/nginx/cluster/node2.conf" &
#
# then open http://127.0.0.1:8081/ and http://127.0.0.1:8083/ (sign in as alice to
# broadcast).  What follows is
# ../nginx.conf (see its header for the locations) with this node's addresses, the
# upstream nchan_redis and nchan_redis_pass in every Nchan location.  Where its
# comments speak of the memory store: here the channels live in Redis.

`

// clusterRedisUpstream goes before `upstream app {`.
const clusterRedisUpstream = `  # ---- The Redis shared by every node (cluster/*.conf only) -----------------------------
  upstream nchan_redis {
    nchan_redis_server redis://` + clusterRedis + `;
    nchan_redis_namespace ` + clusterNamespace + `;   # one per deployment sharing a Redis
    # Nchan 1.3.6 reconnects at once when Redis goes away, and that attempt fails only
    # when this timeout ends (default 10 s): without it, ~11 s of 503 after an outage.
    nchan_redis_connect_timeout 500ms;
  }

`

var (
	nchanEndpointLine = regexp.MustCompile(`(?m)^[ \t]*nchan_(?:publisher|subscriber)\b`)
	nchanChannelLine  = regexp.MustCompile(`(?m)^([ \t]*)nchan_channel_id [^\n]*\n`)
)

// clusterConf derives node's config from the shipped one: a header of its
// own, node's addresses, the Redis upstream, and nchan_redis_pass after
// every nchan_channel_id (one per Nchan location). It fails when an anchor
// is missing.
func clusterConf(shipped string, node int) (string, error) {
	n := clusterNodes[node-1]
	i := strings.Index(shipped, "\nload_module ")
	if i < 0 {
		return "", fmt.Errorf("%s: no line starting with `load_module ` to end the header at", shippedConf)
	}
	conf := shipped[i+1:]
	for _, s := range []string{"listen " + shippedListen + ";", "listen " + shippedPublisher + ";", "server " + shippedUpstream + ";"} {
		if strings.Count(conf, s) != 1 {
			return "", fmt.Errorf("%s: want one %q", shippedConf, s)
		}
	}
	if strings.Contains(conf, "nchan_redis") || strings.Contains(conf, clusterRedis) {
		return "", fmt.Errorf("%s: already mentions nchan_redis or %s; the cluster configs add them", shippedConf, clusterRedis)
	}
	conf = strings.ReplaceAll(conf, shippedListen, n.listen)
	conf = strings.ReplaceAll(conf, shippedPublisher, n.publisher)
	conf = strings.ReplaceAll(conf, shippedUpstream, n.app)

	const upstream = "\n  upstream app {\n"
	if strings.Count(conf, upstream) != 1 {
		return "", fmt.Errorf("%s: want one %q to insert the Redis upstream before", shippedConf, strings.TrimSpace(upstream))
	}
	conf = strings.Replace(conf, upstream, "\n"+clusterRedisUpstream+upstream[1:], 1)

	endpoints, channels := len(nchanEndpointLine.FindAllString(conf, -1)), len(nchanChannelLine.FindAllString(conf, -1))
	if endpoints == 0 || endpoints != channels {
		return "", fmt.Errorf("%s: %d nchan_publisher/nchan_subscriber lines, %d nchan_channel_id lines; want one nchan_channel_id per Nchan location, to add nchan_redis_pass after",
			shippedConf, endpoints, channels)
	}
	conf = nchanChannelLine.ReplaceAllString(conf, "${0}${1}nchan_redis_pass nchan_redis;\n")
	return fmt.Sprintf(clusterHeader, node, n.listen, n.app, n.publisher, clusterRedis, clusterNamespace) + conf, nil
}

// TestClusterConfigsInSync checks that nginx/cluster/node*.conf are what
// clusterConf makes of nginx/nginx.conf (-update rewrites them), and that
// nginx -t takes them unedited.
func TestClusterConfigsInSync(t *testing.T) {
	shipped, err := os.ReadFile(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range clusterNodes {
		want, err := clusterConf(string(shipped), i+1)
		if err != nil {
			t.Fatal(err)
		}
		if *update {
			if err := os.MkdirAll(filepath.Dir(n.file), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(n.file, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(n.file)
		if err != nil {
			t.Fatalf("%v; run `go test ./example -run TestClusterConfigsInSync -update`", err)
		}
		if string(got) != want {
			t.Errorf("%s differs from what %s makes it (%s); run `go test ./example -run TestClusterConfigsInSync -update`",
				n.file, shippedConf, firstDiff(string(got), want))
		}
	}
	for _, n := range clusterNodes {
		t.Run("nginx -t "+filepath.Base(n.file), func(t *testing.T) {
			servers.Require(t, "nginx")
			servers.Require(t, servers.NchanModule)
			bin, err := exec.LookPath("nginx")
			if err != nil {
				bin = "/usr/sbin/nginx"
			}
			conf, err := filepath.Abs(n.file)
			if err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "-t", "-e", "stderr", "-p", t.TempDir(), "-c", conf).CombinedOutput()
			if err != nil {
				t.Fatalf("nginx -t: %v\n%s", err, out)
			}
			if bytes.Contains(out, []byte("[warn]")) || bytes.Contains(out, []byte("[emerg]")) {
				t.Errorf("nginx -t warns:\n%s", out)
			}
		})
	}
}

// firstDiff describes the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl || i >= len(g) || i >= len(w) {
			return fmt.Sprintf("line %d: %q, want %q", i+1, gl, wl)
		}
	}
	return "no line differs"
}

// clusterNodeConf returns the committed nginx/cluster/node<node>.conf as a
// template for servers.StartNginxWith: nginx on {{.Addr}}, its publisher
// server on {{port "pub"}}, the app on {{port "app"}}, Redis at {{.Redis}}.
func clusterNodeConf(t *testing.T, node int) string {
	t.Helper()
	n := clusterNodes[node-1]
	b, err := os.ReadFile(n.file)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for _, s := range []string{"listen " + n.listen + ";", "listen " + n.publisher + ";", "server " + n.app + ";", "redis://" + clusterRedis + ";"} {
		if !strings.Contains(conf, s) {
			t.Fatalf("%s: no %q to replace", n.file, s)
		}
	}
	if strings.Contains(conf, "{{") {
		t.Fatalf("%s: has {{; the test renders it as a template", n.file)
	}
	conf = strings.ReplaceAll(conf, n.listen, "{{.Addr}}")
	conf = strings.ReplaceAll(conf, n.publisher, `127.0.0.1:{{port "pub"}}`)
	conf = strings.ReplaceAll(conf, n.app, `127.0.0.1:{{port "app"}}`)
	return strings.ReplaceAll(conf, clusterRedis, "{{.Redis}}")
}

// TestClusterRun runs what nginx/cluster/*.conf's header says, on free
// ports: one Redis, two instances of the program and two nginx nodes. Alice
// signs in through node 1 and listens through both; a push through node 2's
// app reaches both streams, a broadcast through node 2 her broadcast stream
// on node 1, and logout through node 2 ends her streams on both nodes.
func TestClusterRun(t *testing.T) {
	servers.Require(t, "redis-server")
	servers.Require(t, "nginx")
	servers.Require(t, servers.NchanModule)
	rd := servers.StartRedis(t)
	key := strings.Repeat("5e", 32)
	bc := sessionpush.SuggestedBroadcastChannel

	var nodes []*servers.Nginx
	for node := 1; node <= len(clusterNodes); node++ {
		// Ready once nginx answers; Nchan connects to Redis meanwhile
		// (waitRedisReady).
		n := servers.StartNginxWith(t, clusterNodeConf(t, node), servers.NginxOptions{
			Vars:      map[string]any{"Redis": rd.Addr},
			ReadyPath: "/pub/" + uuid.NewString(),
		})
		waitRedisReady(t, n)
		t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
		startProgram(t, "-addr", fmt.Sprintf("127.0.0.1:%d", n.Ports["app"]), "-redis", rd.Addr, "-session-key", key,
			"-publish-url", pubURL(n)+"/pub/{channel}", "-subscribe-url", "/sub/{channel}", "-broadcast-channel", bc, "-admin", "alice")
		nodes = append(nodes, n)
	}

	// One browser: its cookies are per host, so the jar sends them to both
	// ports.
	alice1 := newBrowser(t, nodes[0].URL)
	alice2 := &browser{t: t, base: nodes[1].URL, c: alice1.c}
	alice1.mustLogin("alice")
	sub := alice1.subscribe()
	if sub.URL != "/sub/"+sub.Channel || sub.Cursor == "" || sub.Broadcast == nil || sub.Broadcast.URL != "/sub/"+bc {
		t.Fatalf("subscription %+v; want url /sub/<channel>, a cursor, and the broadcast channel %s", sub, bc)
	}
	from := "?last_event_id=" + url.QueryEscape(sub.Cursor)
	on2 := alice2.listen(sub.URL + from)
	on1 := alice1.listen(sub.URL + from)
	news := alice1.listen(sub.Broadcast.URL + "?last_event_id=" + url.QueryEscape(sub.Broadcast.Cursor))

	if resp, body := alice2.postJSON("/push", `"hi"`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push through node 2: %s %s", resp.Status, body)
	}
	for name, es := range map[string]*stream{"node 2": on2, "node 1": on1} {
		if _, data := es.next(); data != `"hi"` {
			t.Errorf("EventSource through %s after a push through node 2: %q; want \"hi\"", name, data)
		}
	}
	if resp, body := alice2.postJSON("/broadcast", `"all"`); resp.StatusCode != http.StatusOK {
		t.Fatalf("broadcast through node 2: %s %s", resp.Status, body)
	}
	if _, data := news.next(); data != `"all"` {
		t.Errorf("broadcast stream through node 1: %q; want \"all\"", data)
	}

	if resp, _ := alice2.do("POST", "/logout", "", ""); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout through node 2: %s; want 303", resp.Status)
	}
	for name, es := range map[string]*stream{"node 2": on2, "node 1": on1} {
		if rest := es.rest(); !strings.HasSuffix(rest, ":410: 410 Gone\n\n") {
			t.Errorf("EventSource through %s after logout through node 2: %q; want it to end with :410: 410 Gone", name, rest)
		}
	}
	if resp, _ := alice1.do("POST", "/subscribe", "", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/subscribe through node 1 after logout: %s; want 401", resp.Status)
	}
}

// TestClusterConfAnchors checks that clusterConf fails, rather than
// guessing, when an anchor of the transform is missing from nginx.conf.
func TestClusterConfAnchors(t *testing.T) {
	b, err := os.ReadFile(shippedConf)
	if err != nil {
		t.Fatal(err)
	}
	shipped := string(b)
	if _, err := clusterConf(shipped, 1); err != nil {
		t.Fatalf("the shipped config: %v", err)
	}
	for name, edit := range map[string]func(string) string{
		"no load_module":      func(s string) string { return strings.Replace(s, "\nload_module ", "\n#load_module ", 1) },
		"no listen":           func(s string) string { return strings.Replace(s, "listen "+shippedListen, "listen 127.0.0.1:9", 1) },
		"no publisher listen": func(s string) string { return strings.Replace(s, "listen "+shippedPublisher, "listen 127.0.0.1:9", 1) },
		"no upstream app":     func(s string) string { return strings.Replace(s, "upstream app {", "upstream backend {", 1) },
		"no nchan_channel_id": func(s string) string { return strings.Replace(s, "nchan_channel_id $1;", "nchan_channel_id\t$1;", 1) },
		"Redis already":       func(s string) string { return strings.Replace(s, "http {\n", "http {\n  # nchan_redis\n", 1) },
	} {
		if _, err := clusterConf(edit(shipped), 1); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// waitRedisReady waits until n's Nchan has its Redis: a channel never
// opened answers 503 on the publisher server before, 404 after.
func waitRedisReady(t *testing.T, n *servers.Nginx) {
	t.Helper()
	u := pubURL(n) + "/pub/" + uuid.NewString()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		status, err := request(guardCase{method: "GET", url: u})
		if err == nil && status == http.StatusNotFound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx on %s: Nchan without Redis after 10 s: GET %s: %d %v", n.Addr, u, status, err)
		}
	}
}
