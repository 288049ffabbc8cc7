package main

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/redisstore"
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
