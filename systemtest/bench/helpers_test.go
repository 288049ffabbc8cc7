package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/relay"
)

const broadcastID = sessionpush.SuggestedBroadcastChannel

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, s)
	}
	return n
}

// countingRelay counts the relay calls made through it.
type countingRelay struct {
	relay.Relay
	publish, open, info, close atomic.Int64
}

func (c *countingRelay) Open(ctx context.Context, ch string) (string, error) {
	c.open.Add(1)
	return c.Relay.Open(ctx, ch)
}

func (c *countingRelay) Publish(ctx context.Context, ch string, m relay.Message) (relay.Receipt, error) {
	c.publish.Add(1)
	return c.Relay.Publish(ctx, ch, m)
}

func (c *countingRelay) Info(ctx context.Context, ch string) (relay.Info, error) {
	c.info.Add(1)
	return c.Relay.Info(ctx, ch)
}

func (c *countingRelay) Close(ctx context.Context, ch string) error {
	c.close.Add(1)
	return c.Relay.Close(ctx, ch)
}

func (c *countingRelay) reset() {
	c.publish.Store(0)
	c.open.Store(0)
	c.info.Store(0)
	c.close.Store(0)
}

func (c *countingRelay) calls() int64 {
	return c.publish.Load() + c.open.Load() + c.info.Load() + c.close.Load()
}

// openAll opens ids on rel, 32 at a time, and returns their cursors.
func openAll(t *testing.T, rel relay.Relay, ids []string) []string {
	t.Helper()
	cursors := make([]string, len(ids))
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
		fail atomic.Value
	)
	for i, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := rel.Open(context.Background(), id)
			if err != nil {
				fail.CompareAndSwap(nil, err)
			}
			cursors[i] = c
		})
	}
	wg.Wait()
	if err := fail.Load(); err != nil {
		t.Fatal(err)
	}
	return cursors
}

// nchanConf: a publisher for 127.0.0.1, a subscriber location for session
// channels (cap 10, as the embedded relay's default; no
// nchan_authorize_request: the benchmark has no application) and the exact
// location of the broadcast channel without a cap, as in
// example/nginx/nginx.conf. Connections and descriptors for 2N.
const nchanConf = `
{{template "main" .}}
worker_rlimit_nofile {{.NoFile}};
error_log error.log warn;
events { worker_connections {{.Conns}}; }
http {
  access_log off;
{{template "temp_paths"}}
  nchan_shared_memory_size 256M;
  server {
    listen {{.Addr}} backlog=4096;
    client_max_body_size 64k;
    location ~ "^/pub/([0-9a-f-]{36})$" {
      allow 127.0.0.1;
      deny all;
      nchan_publisher http;
      nchan_channel_id $1;
    }
    location ~ "^/sub/([0-9a-f-]{36})$" {
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_max_channel_subscribers 10;
    }
    location = /sub/{{.Broadcast}} {
      nchan_subscriber eventsource;
      nchan_channel_id {{.Broadcast}};
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_max_channel_subscribers 0;
    }
  }
}
`

// startNchan starts nginx+Nchan with nchanConf, sized for n listeners (and
// as many connections again), and checks at the end of the test that no
// nginx process outlived it.
func startNchan(t *testing.T, n int) *servers.Nginx {
	// Registered before StartNginxWith, so it runs after nginx's stop.
	var master, worker int
	t.Cleanup(func() {
		time.Sleep(100 * time.Millisecond) // reaped
		for _, pid := range []int{master, worker} {
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), "nginx") {
					t.Errorf("nginx process %d still running after the test", pid)
				}
			}
		}
	})
	ngx := servers.StartNginxWith(t, nchanConf, servers.NginxOptions{
		Vars: map[string]any{
			"Broadcast": broadcastID,
			"NoFile":    2*n + 2048,
			"Conns":     2*n + 1024,
		},
		ReadyPath: "/pub/00000000-0000-4000-8000-000000000000",
	})
	master, worker = ngx.PID(), ngx.WorkerPID()
	t.Cleanup(func() {
		if t.Failed() {
			log := ngx.ErrorLog()
			t.Logf("nginx error.log (tail):\n%s", log[max(0, len(log)-4000):])
		}
	})
	return ngx
}
