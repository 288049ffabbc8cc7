package redishub_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/redishub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/relaytest"
)

func TestConformance(t *testing.T) {
	const maxListeners, maxSize = 3, 64 << 10
	c := newCluster(t, 1, clusterOpts{relay: redishub.Options{Hub: hub.Options{MaxListeners: maxListeners, MaxMessageSize: maxSize}}})
	in := c.inst[0]
	relaytest.Run(t, relaytest.Target{
		Relay: in.relay,
		NewSession: func(t testing.TB) relaytest.Session {
			b := c.login(t, in)
			sub := b.subscribe(t, in)
			return relaytest.Session{Client: b.client, Channel: sub.Channel, Cursor: sub.Cursor, URL: in.srv.URL + sub.URL}
		},
		Unopened: func(t testing.TB) relaytest.Session {
			b := c.login(t, in)
			resp, err := b.client.Get(in.srv.URL + "/whoami")
			if err != nil {
				t.Fatal(err)
			}
			id, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return relaytest.Session{Client: b.client, Channel: string(id), URL: in.srv.URL + "/sub/" + string(id)}
		},
		MaxListeners:   maxListeners,
		MaxMessageSize: maxSize,
	})
}

// TestPushReachesEveryInstance: listeners of one channel on three
// instances each get every push, from any instance, once, in order.
func TestPushReachesEveryInstance(t *testing.T) {
	c := newCluster(t, 3, clusterOpts{})
	b := c.login(t, c.inst[0])
	sub := b.subscribe(t, c.inst[0])
	var ls []*stream
	for _, in := range c.inst {
		ls = append(ls, b.mustListen(t, in, sub.URL, ""))
	}
	c.waitListeners(t, c.inst[1], sub.Channel, 3)
	const n = 30
	for i := range n {
		rc, err := c.inst[i%3].mgr.Push(ctxT(t), sub.Channel, sessionpush.Message{Body: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		if rc.Listeners != 3 {
			t.Errorf("push %d: receipt counts %d listeners, want 3", i, rc.Listeners)
		}
	}
	for k, l := range ls {
		var last relay.MessageID
		for i := range n {
			ev := l.next(t)
			if ev.Data != strconv.Itoa(i) {
				t.Fatalf("listener %d: event %d is %q", k, i, ev.Data)
			}
			id, err := relay.ParseMessageID(ev.ID)
			if err != nil || id.Compare(last) <= 0 {
				t.Fatalf("listener %d: id %q after %v (%v)", k, ev.ID, last, err)
			}
			last = id
		}
		l.quiet(t)
	}
}

// TestBroadcastAcrossInstances: Broadcast from one instance reaches
// listeners on every instance, by fan-out and on the broadcast channel.
func TestBroadcastAcrossInstances(t *testing.T) {
	for _, bc := range []string{"", sessionpush.SuggestedBroadcastChannel} {
		t.Run(fmt.Sprintf("channel=%q", bc), func(t *testing.T) {
			c := newCluster(t, 2, clusterOpts{broadcast: bc})
			var ls []*stream
			for i := range 4 {
				in := c.inst[i%2]
				b := c.login(t, in)
				sub := b.subscribe(t, c.inst[(i+1)%2])
				url := sub.URL
				if bc != "" {
					url = sub.Broadcast.URL
				}
				ls = append(ls, b.mustListen(t, in, url, ""))
			}
			if bc != "" {
				c.waitListeners(t, c.inst[0], bc, 4)
			}
			res, err := c.inst[1].mgr.Broadcast(ctxT(t), "hello")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("broadcast: %+v", res)
			for _, l := range ls {
				if ev := l.next(t); ev.Data != `"hello"` {
					t.Errorf("got %q", ev.Data)
				}
				l.quiet(t)
			}
		})
	}
}

// TestSignOutEndsEveryInstance: sign-out on one instance ends the
// session's listeners on all of them, on every transport.
func TestSignOutEndsEveryInstance(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{})
	b := c.login(t, c.inst[0])
	sub := b.subscribe(t, c.inst[0])
	es := b.mustListen(t, c.inst[1], sub.URL, "")
	es0 := b.mustListen(t, c.inst[0], sub.URL, "")
	poll := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", c.inst[1].srv.URL+sub.URL, nil)
		req.Header.Set("Last-Event-ID", sub.Cursor)
		resp, err := b.client.Do(req)
		if err != nil {
			poll <- 0
			return
		}
		resp.Body.Close()
		poll <- resp.StatusCode
	}()
	c.waitListeners(t, c.inst[0], sub.Channel, 3)
	b.logout(t, c.inst[0])
	es.ended(t)
	es0.ended(t)
	if code := <-poll; code != http.StatusGone {
		t.Errorf("long-poll on the other instance: %d, want 410", code)
	}
	if _, code := b.listen(t, c.inst[1], sub.URL, ""); code != http.StatusForbidden {
		t.Errorf("listen after sign-out: %d, want 403", code)
	}
}

// TestResumeOnAnotherInstance: a listener cut from A that comes back to B
// with its last ID gets what is still buffered, once, in order, and behind
// the buffer the gap signal.
func TestResumeOnAnotherInstance(t *testing.T) {
	c := newCluster(t, 3, clusterOpts{relay: redishub.Options{Hub: hub.Options{BufferLength: 5}}})
	A, B := c.inst[0], c.inst[1]
	b := c.login(t, A)
	sub := b.subscribe(t, A)
	l := b.mustListen(t, A, sub.URL, sub.Cursor)
	push := func(body string) {
		t.Helper()
		if _, err := A.mgr.Push(ctxT(t), sub.Channel, sessionpush.Message{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	push("1")
	last := l.next(t)
	l.close()
	push("2")
	push("3")
	l = b.mustListen(t, B, sub.URL, last.ID)
	for _, want := range []string{"2", "3"} {
		if ev := l.next(t); ev.Data != want || ev.Name != "" {
			t.Fatalf("after resuming: %+v, want %q", ev, want)
		}
	}
	push("4")
	if ev := l.next(t); ev.Data != "4" {
		t.Fatalf("got %+v", ev)
	}
	l.quiet(t)
	l.close()

	// Behind the buffer: 7 more messages, the buffer keeps 5.
	for i := 5; i <= 11; i++ {
		push(strconv.Itoa(i))
	}
	// A and B have replicas from before; the third instance opens one from
	// Redis's stream.
	for _, in := range c.inst {
		l = b.mustListen(t, in, sub.URL, last.ID)
		if ev := l.next(t); ev.Name != "gap" || ev.Data != last.ID {
			t.Fatalf("want the gap signal after %s, got %+v", last.ID, ev)
		}
		for i := 7; i <= 11; i++ {
			if ev := l.next(t); ev.Data != strconv.Itoa(i) {
				t.Fatalf("got %+v, want %d", ev, i)
			}
		}
		l.quiet(t)
		l.close()
	}
}

// TestCapAcrossInstances: the listener cap holds over instances once
// their counts are written (see the package documentation).
func TestCapAcrossInstances(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{relay: redishub.Options{Hub: hub.Options{MaxListeners: 3}}})
	b := c.login(t, c.inst[0])
	sub := b.subscribe(t, c.inst[0])
	b.mustListen(t, c.inst[0], sub.URL, "")
	b.mustListen(t, c.inst[0], sub.URL, "")
	b.mustListen(t, c.inst[1], sub.URL, "")
	c.waitListeners(t, c.inst[1], sub.Channel, 3)
	for _, in := range c.inst {
		in.relay.Sync(context.Background()) // each has read the other's count
		if _, code := b.listen(t, in, sub.URL, ""); code != http.StatusForbidden {
			t.Errorf("a fourth listener on %s: %d, want 403", in.srv.URL, code)
		}
	}
	// Lifted for the channel: every instance hears of it at once.
	if err := c.inst[1].relay.SetMaxListeners(sub.Channel, -1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		_, code := b.listen(t, c.inst[0], sub.URL, "")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after lifting the cap: %d", code)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUnopenedChannel: only channels open in Redis can be listened to, on
// any instance.
func TestUnopenedChannel(t *testing.T) {
	c := newCluster(t, 1, clusterOpts{})
	in := c.inst[0]
	rec := httptestRecorder()
	in.relay.ServeListener(rec, newGet("/sub/x", "text/event-stream"), "never-opened")
	if rec.Code != http.StatusForbidden {
		t.Errorf("never opened: %d", rec.Code)
	}
	if _, err := in.relay.Publish(ctxT(t), "never-opened", relay.Message{}); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("publish: %v", err)
	}
	if err := in.relay.Close(ctxT(t), "never-opened"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("close: %v", err)
	}
}

// TestOneWritePerPush counts Redis commands: each push is one script call
// (EVALSHA), one XADD and one PUBLISH, however many listeners on however
// many instances.
func TestOneWritePerPush(t *testing.T) {
	c := newCluster(t, 3, clusterOpts{relay: redishub.Options{SyncInterval: time.Hour}})
	b := c.login(t, c.inst[0])
	sub := b.subscribe(t, c.inst[0])
	var ls []*stream
	for i := range 9 {
		ls = append(ls, b.mustListen(t, c.inst[i%3], sub.URL, ""))
	}
	_ = ls
	for _, in := range c.inst { // Redis learns the script
		if _, err := in.relay.Publish(ctxT(t), sub.Channel, relay.Message{Body: []byte("warm-up")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range ls {
		for range c.inst {
			l.next(t)
		}
	}
	admin := redis.NewClient(&redis.Options{Addr: c.redis.Addr})
	defer admin.Close()
	var hooks []*counter
	for _, in := range c.inst {
		h := &counter{}
		in.client.AddHook(h)
		hooks = append(hooks, h)
	}
	before := commandStats(t, admin)
	const n = 50
	for i := range n {
		if _, err := c.inst[i%3].relay.Publish(ctxT(t), sub.Channel, relay.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range ls {
		for range n {
			l.next(t)
		}
	}
	after := commandStats(t, admin)
	for _, cmd := range []string{"evalsha", "xadd", "publish"} {
		if d := after[cmd] - before[cmd]; d != n {
			t.Errorf("%s: %d calls for %d pushes", cmd, d, n)
		}
	}
	var sent int64
	for _, h := range hooks {
		sent += h.n.Load()
	}
	if sent != n {
		t.Errorf("the instances sent %d commands for %d pushes, want %d", sent, n, n)
	}
	t.Logf("per push: %d round trip, Redis commands %v", sent/n, diff(before, after))
}

type counter struct{ n atomicInt }

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

func commandStats(t *testing.T, c *redis.Client) map[string]int64 {
	t.Helper()
	s, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for line := range strings.SplitSeq(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		m[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.ParseInt(calls, 10, 64)
	}
	return m
}

func diff(a, b map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range b {
		if k != "info" && v != a[k] {
			d[k] = v - a[k]
		}
	}
	return d
}

// TestRedisRestart: with Redis down, pushes fail with ErrRedis and
// listeners stay; once it is back (empty: no persistence) and the channel
// opened again, they get what is pushed, once.
func TestRedisRestart(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{})
	A, B := c.inst[0], c.inst[1]
	b := c.login(t, A)
	sub := b.subscribe(t, A)
	other := c.login(t, A).subscribe(t, A)
	la := b.mustListen(t, A, sub.URL, "")
	lb := b.mustListen(t, B, sub.URL, "")
	c.waitListeners(t, A, sub.Channel, 2)
	if _, err := B.relay.Publish(ctxT(t), sub.Channel, relay.Message{Body: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	la.next(t)
	lb.next(t)

	c.redis.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err := A.relay.Publish(ctx, sub.Channel, relay.Message{Body: []byte("down")})
	cancel()
	if !errors.Is(err, redishub.ErrRedis) || errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("publish with Redis down: %v; want ErrRedis", err)
	}
	t.Logf("publish with Redis down: %v", err)
	// A new listener needs Redis to open a replica: 503.
	rec := httptestRecorder()
	B.relay.ServeListener(rec, newGet("/sub/x", "text/event-stream"), other.Channel)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("new listener with Redis down: %d, want 503", rec.Code)
	}
	c.redis.Start()

	// The session's next /subscribe opens the channel again, with the same ID.
	deadline := time.Now().Add(wait)
	for {
		if _, err := A.relay.Open(ctxT(t), sub.Channel); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Open after the restart keeps failing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The replicas' subscriptions come back by themselves, and whatever is
	// published before a replica hears of it, it reads from the stream.
	const n = 5
	for i := range n {
		if _, err := B.relay.Publish(ctxT(t), sub.Channel, relay.Message{Body: []byte(fmt.Sprintf("after %d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	for k, l := range []*stream{la, lb} {
		for i := range n {
			if ev := l.next(t); ev.Data != fmt.Sprintf("after %d", i) {
				t.Fatalf("listener %d: got %+v, want after %d", k, ev, i)
			}
		}
		l.quiet(t)
	}
}

// TestExpiryOnce: with every instance running ExpireIdle, an idle channel
// is closed exactly once, and a channel with a listener on another
// instance is not.
func TestExpiryOnce(t *testing.T) {
	c := newCluster(t, 3, clusterOpts{idle: time.Millisecond})
	b1 := c.login(t, c.inst[0])
	idle := b1.subscribe(t, c.inst[0])
	b2 := c.login(t, c.inst[0])
	busy := b2.subscribe(t, c.inst[0])
	l := b2.mustListen(t, c.inst[2], busy.URL, "")
	c.waitListeners(t, c.inst[0], busy.Channel, 1)
	time.Sleep(5 * time.Millisecond) // past IdleTimeout
	var wg sync.WaitGroup
	var closed atomicInt
	for _, in := range c.inst {
		wg.Go(func() {
			n, err := in.mgr.ExpireIdle(context.Background())
			if err != nil {
				t.Error(err)
			}
			closed.Add(int64(n))
		})
	}
	wg.Wait()
	if closed.Load() != 1 {
		t.Errorf("%d channels closed, want 1", closed.Load())
	}
	if _, err := c.inst[1].relay.Info(ctxT(t), idle.Channel); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("idle channel: %v", err)
	}
	if _, err := c.inst[1].relay.Info(ctxT(t), busy.Channel); err != nil {
		t.Errorf("busy channel: %v", err)
	}
	l.quiet(t)
}

type atomicInt = atomic.Int64

func httptestRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }

func newGet(path, accept string) *http.Request {
	r := httptest.NewRequest("GET", path, nil)
	r.Header.Set("Accept", accept)
	return r
}
