package main

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/redisstore"
	"github.com/sessionpush/sessionpush/relaytest"
)

// TestRunWithRedis runs the example with -redis: the channel that
// /subscribe opens is recorded in Redis, where another instance's store
// finds it, and logout removes it there.
func TestRunWithRedis(t *testing.T) {
	rd := servers.StartRedis(t)
	p := startProgram(t, "-addr", "127.0.0.1:0", "-redis", rd.Addr)
	b := newBrowser(t, p.URL)
	b.mustLogin("alice")
	sub := b.subscribe()

	rc := redis.NewClient(&redis.Options{Addr: rd.Addr})
	defer rc.Close()
	other := redisstore.New(rc, redisstore.Options{}) // as another instance sees it
	ctx := context.Background()
	rec, ok, err := other.Get(ctx, sub.Channel)
	if err != nil || !ok || rec.User != "alice" {
		t.Fatalf("Redis holds %+v, %v, %v; want alice's channel", rec, ok, err)
	}
	if resp, _ := b.do("POST", "/logout", "", ""); resp.StatusCode != 303 && resp.StatusCode != 200 {
		t.Fatalf("logout: %s", resp.Status)
	}
	if _, ok, err := other.Get(ctx, sub.Channel); ok || err != nil {
		t.Fatalf("after logout Redis still holds the channel (%v, %v)", ok, err)
	}
}

// TestRunWithRedisHub runs two instances of the example with -redis and no
// -publish-url: a listener on one instance gets what is pushed on the
// other, and signing out on the other ends it.
func TestRunWithRedisHub(t *testing.T) {
	rd := servers.StartRedis(t)
	key := strings.Repeat("ab", 32)
	a := startProgram(t, "-addr", "127.0.0.1:0", "-redis", rd.Addr, "-session-key", key)
	b := startProgram(t, "-addr", "127.0.0.1:0", "-redis", rd.Addr, "-session-key", key)
	onA := newBrowser(t, a.URL)
	onA.mustLogin("alice")
	sub := onA.subscribe()
	onB := newBrowser(t, b.URL)
	onB.c.Jar = onA.c.Jar // one browser: cookies are per host, not per port
	req, _ := http.NewRequest("GET", b.URL+sub.URL, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := onB.c.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("listen on B: %v %v", resp, err)
	}
	defer resp.Body.Close()
	rd2 := bufio.NewReader(resp.Body)
	if line, _ := rd2.ReadString('\n'); line != ": hi\n" {
		t.Fatalf("first line %q", line)
	}
	if r, _ := onA.do("POST", "/push", "application/json", `{"text":"from A"}`); r.StatusCode != 204 {
		t.Fatalf("push on A: %s", r.Status)
	}
	ev, ok := relaytest.ReadEvent(rd2)
	if !ok || ev.Data != `{"text":"from A"}` {
		t.Fatalf("listener on B got %+v, %v", ev, ok)
	}
	if r, _ := onA.do("POST", "/logout", "", ""); r.StatusCode != 303 && r.StatusCode != 200 {
		t.Fatalf("logout: %s", r.Status)
	}
	if ev, ok := relaytest.ReadEvent(rd2); ok {
		t.Fatalf("after logout on A, the listener on B got %+v", ev)
	}
}
