package sessionpush_test

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
)

func TestMemoryStore(t *testing.T) {
	ctx := context.Background()
	s := sessionpush.NewMemoryStore()
	t0 := time.Unix(1_700_000_000, 0)
	if _, ok, err := s.Get(ctx, "a"); ok || err != nil {
		t.Fatalf("Get(missing) = %v, %v", ok, err)
	}
	for _, r := range []sessionpush.Record{
		{ID: "a", User: "alice", Opened: t0, LastSeen: t0},
		{ID: "b", User: "alice", Opened: t0, LastSeen: t0},
		{ID: "c", User: "bob", Opened: t0, LastSeen: t0},
	} {
		if err := s.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if recs, _ := s.ByUser(ctx, "alice"); len(recs) != 2 {
		t.Fatalf("ByUser(alice) = %v", recs)
	}
	// Re-adding a channel under another user moves it in the user index.
	s.Add(ctx, sessionpush.Record{ID: "b", User: "bob", Opened: t0, LastSeen: t0})
	if recs, _ := s.ByUser(ctx, "alice"); len(recs) != 1 || recs[0].ID != "a" {
		t.Fatalf("ByUser(alice) after a move = %v", recs)
	}
	s.Touch(ctx, "a", t0.Add(time.Hour))
	s.Touch(ctx, "missing", t0) // not an error, adds nothing
	if r, _, _ := s.Get(ctx, "a"); !r.LastSeen.Equal(t0.Add(time.Hour)) || !r.Opened.Equal(t0) {
		t.Fatalf("after Touch: %+v", r)
	}
	seen := map[string]bool{}
	for r, err := range s.All(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		seen[r.ID] = true
		s.Remove(ctx, r.ID) // the loop body may change the store
	}
	if len(seen) != 3 || s.Len() != 0 {
		t.Fatalf("All yielded %v, %d left", seen, s.Len())
	}
	if recs, _ := s.ByUser(ctx, "bob"); len(recs) != 0 {
		t.Fatalf("ByUser after removal = %v", recs)
	}
	cctx, cancel := context.WithCancel(ctx)
	s.Add(ctx, sessionpush.Record{ID: "z", User: "u"})
	cancel()
	for _, err := range s.All(cctx) {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("All on a cancelled context yielded %v", err)
		}
	}
}

func TestMemoryStoreRemoveExactlyOnce(t *testing.T) {
	s := sessionpush.NewMemoryStore()
	s.Add(context.Background(), sessionpush.Record{ID: "a", User: "u"})
	var removed atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			if ok, _ := s.Remove(context.Background(), "a"); ok {
				removed.Add(1)
			}
		})
	}
	wg.Wait()
	if removed.Load() != 1 {
		t.Fatalf("%d removers saw a removal, want exactly 1", removed.Load())
	}
}

func TestExpireIdle(t *testing.T) {
	store := sessionpush.NewMemoryStore()
	a := newApp(t, func(c *sessionpush.Config) { c.Store = store; c.IdleTimeout = time.Minute })
	ctx := context.Background()
	idle := a.browser().login("alice").subscribe()
	fresh := a.browser().login("carol").subscribe()
	busyB := a.browser().login("bob")
	busy := busyB.subscribe()
	es, _ := busyB.listen(busy.URL)
	a.waitListeners(busy.Channel, 1)

	old := time.Now().Add(-time.Hour)
	for _, id := range []string{idle.Channel, busy.Channel} {
		r, _, _ := store.Get(ctx, id)
		r.LastSeen = old
		store.Add(ctx, r)
	}
	n, err := a.mgr.ExpireIdle(ctx)
	if n != 1 || err != nil {
		t.Fatalf("ExpireIdle = %d, %v; want 1 closed", n, err)
	}
	if ok, _ := a.mgr.Exists(ctx, idle.Channel); ok {
		t.Fatal("the idle channel is still open")
	}
	for _, id := range []string{busy.Channel, fresh.Channel} {
		if ok, _ := a.mgr.Exists(ctx, id); !ok {
			t.Fatalf("channel %s was closed", id)
		}
	}
	if r, _, _ := store.Get(ctx, busy.Channel); !r.LastSeen.After(old) {
		t.Fatal("a channel with a listener was not touched")
	}
	if _, err := a.relay.Info(ctx, idle.Channel); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Fatalf("relay still has the expired channel: %v", err)
	}
	_ = es
}

func TestRunStopsWithContext(t *testing.T) {
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: sessions.NewCookieStore(make([]byte, 32)), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- mgr.Run(ctx) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	waitGoroutines(t, before)
}

// waitGoroutines waits until no more than n goroutines run.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}
