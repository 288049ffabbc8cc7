package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/redisstore"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// startRedis starts a redis-server for the test (skipping it when none is
// installed, see servers.Require) and returns it with a client.
func startRedis(t *testing.T, opts *redis.Options) (*servers.Redis, *redis.Client) {
	t.Helper()
	srv := servers.StartRedis(t)
	if opts == nil {
		opts = &redis.Options{}
	}
	opts.Addr = srv.Addr
	client := redis.NewClient(opts)
	t.Cleanup(func() { client.Close() }) // before Redis stops: cleanups run last first
	return srv, client
}

var prefixes atomic.Int64

// freshPrefix returns a key prefix no other store of the test binary uses.
func freshPrefix() string { return fmt.Sprintf("test%d:", prefixes.Add(1)) }

func TestConformance(t *testing.T) {
	_, client := startRedis(t, nil)
	var watch commandWatch
	client.AddHook(&watch)
	for _, pageSize := range []int{0, 10} {
		t.Run(fmt.Sprint("PageSize", pageSize), func(t *testing.T) {
			sessionpushtest.TestStore(t, func(t *testing.T) sessionpush.Store {
				return redisstore.New(client, redisstore.Options{Prefix: freshPrefix(), PageSize: pageSize})
			})
		})
	}
	for _, bad := range watch.bad() {
		t.Errorf("the store sent %s, which may block Redis", bad)
	}
}

// commandWatch is a go-redis hook that notes every command outside the few
// that the store may send, and every ZRANGE without a LIMIT.
type commandWatch struct {
	mu   sync.Mutex
	seen map[string]bool
}

// allowed are the commands of the store, each bounded by a page or by one
// user's channels, and go-redis's connection handshake.
var allowed = map[string]bool{
	"evalsha": true, "eval": true, "hmget": true, "smembers": true, "zrange": true,
	"hello": true, "client": true,
}

func (w *commandWatch) note(cmd redis.Cmder) {
	name := cmd.Name()
	args := fmt.Sprint(cmd.Args())
	if allowed[name] && (name != "zrange" || strings.Contains(args, " limit ")) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	w.seen[args] = true
}

func (w *commandWatch) bad() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Sorted(maps.Keys(w.seen))
}

func (w *commandWatch) DialHook(next redis.DialHook) redis.DialHook { return next }

func (w *commandWatch) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		w.note(cmd)
		return next(ctx, cmd)
	}
}

func (w *commandWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			w.note(cmd)
		}
		return next(ctx, cmds)
	}
}

// hashTag returns the part of key that Redis Cluster hashes.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// keys returns the keys that start with base, found with SCAN.
func keys(t *testing.T, client *redis.Client, base string) []string {
	t.Helper()
	var all []string
	iter := client.Scan(t.Context(), 0, "*", 100).Iterator()
	for iter.Next(t.Context()) {
		if strings.HasPrefix(iter.Val(), base) {
			all = append(all, iter.Val())
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(all)
	return all
}

func TestKeyLayout(t *testing.T) {
	_, client := startRedis(t, nil)
	ctx := t.Context()
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 6_789_000, time.UTC)
	for _, tc := range []struct{ prefix, base, tag string }{
		{"", "{sessionpush:}", "sessionpush:"},
		{"myapp:", "{myapp:}", "myapp:"},
		{"app:{push}:", "app:{push}:", "push"},
		{"a}b:", "{a}b:}", "a"},
		{"}odd{", "{sessionpush}}odd{", "sessionpush"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			client.FlushDB(ctx)
			s := redisstore.New(client, redisstore.Options{Prefix: tc.prefix})
			for _, r := range []sessionpush.Record{
				{ID: "a", User: "alice", Opened: t0, LastSeen: t0.Add(time.Second)},
				{ID: "b", User: "alice", Opened: t0, LastSeen: t0},
				{ID: "c", User: "bob", Opened: t0, LastSeen: t0},
			} {
				if err := s.Add(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			got := keys(t, client, "")
			want := []string{tc.base + "ch:a", tc.base + "ch:b", tc.base + "ch:c", tc.base + "channels", tc.base + "user:alice", tc.base + "user:bob"}
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("keys %q, want %q", got, want)
			}
			for _, k := range got {
				if tag := hashTag(k); tag != tc.tag {
					t.Errorf("key %q hashes %q, want %q", k, tag, tc.tag)
				}
				if ttl := client.TTL(ctx, k).Val(); ttl != -1 {
					t.Errorf("key %q has a TTL of %v; records must live until removed", k, ttl)
				}
			}
			h := client.HGetAll(ctx, tc.base+"ch:a").Val()
			if want := map[string]string{"user": "alice", "opened": "1735787045006789", "lastseen": "1735787046006789"}; !maps.Equal(h, want) {
				t.Errorf("hash of a = %v, want %v", h, want)
			}
			if m := slices.Sorted(slices.Values(client.SMembers(ctx, tc.base+"user:alice").Val())); !slices.Equal(m, []string{"a", "b"}) {
				t.Errorf("set of alice = %v", m)
			}
			if m := client.ZRangeWithScores(ctx, tc.base+"channels", 0, -1).Val(); len(m) != 3 || m[0].Member != "a" || m[0].Score != 0 {
				t.Errorf("index = %v", m)
			}
			for _, id := range []string{"a", "b", "c"} {
				if _, err := s.Remove(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.Touch(ctx, "a", t0); err != nil { // must not bring back a partial hash
				t.Fatal(err)
			}
			if got := keys(t, client, ""); len(got) != 0 {
				t.Errorf("keys left after removing every channel and touching one: %q", got)
			}
		})
	}
}

func TestPrefixesKeepStoresApart(t *testing.T) {
	_, client := startRedis(t, nil)
	ctx := t.Context()
	a := redisstore.New(client, redisstore.Options{Prefix: "a:"})
	b := redisstore.New(client, redisstore.Options{Prefix: "b:"})
	if err := a.Add(ctx, sessionpush.Record{ID: "x", User: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.Get(ctx, "x"); ok || err != nil {
		t.Fatalf("b.Get(x) = %v, %v", ok, err)
	}
	if recs, err := b.ByUser(ctx, "alice"); len(recs) != 0 || err != nil {
		t.Fatalf("b.ByUser(alice) = %v, %v", recs, err)
	}
	for r, err := range b.All(ctx) {
		t.Fatalf("b.All yielded %+v, %v", r, err)
	}
	if removed, err := b.Remove(ctx, "x"); removed || err != nil {
		t.Fatalf("b.Remove(x) = %v, %v", removed, err)
	}
	if _, ok, err := a.Get(ctx, "x"); !ok || err != nil {
		t.Fatalf("a.Get(x) = %v, %v", ok, err)
	}
}

// TestIndexesStayExact checks the raw keys after concurrent moves and
// removals of the same channels: a user's set holds exactly the channels
// whose hash names that user, and the index exactly the channels that have
// a hash. (ByUser hides a stale set member, so the conformance suite alone
// cannot see one.)
func TestIndexesStayExact(t *testing.T) {
	_, client := startRedis(t, nil)
	ctx := t.Context()
	s := redisstore.New(client, redisstore.Options{Prefix: "x:"})
	const channels, users = 16, 8
	var wg sync.WaitGroup
	start := make(chan struct{})
	for u := range users {
		for c := range channels {
			wg.Go(func() {
				<-start
				id, user := fmt.Sprint("c", c), fmt.Sprint("u", u)
				for i := range 20 {
					var err error
					if (i+u)%5 == 0 {
						_, err = s.Remove(ctx, id)
					} else {
						err = s.Add(ctx, sessionpush.Record{ID: id, User: user})
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	close(start)
	wg.Wait()

	owners := map[string]string{} // channel → user, from the hashes
	for c := range channels {
		id := fmt.Sprint("c", c)
		if u, err := client.HGet(ctx, "{x:}ch:"+id, "user").Result(); err == nil {
			owners[id] = u
		} else if !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
	}
	indexed := map[string]string{}
	for u := range users {
		user := fmt.Sprint("u", u)
		for _, id := range client.SMembers(ctx, "{x:}user:"+user).Val() {
			if prev, dup := indexed[id]; dup {
				t.Errorf("%s is in the sets of %s and %s", id, prev, user)
			}
			indexed[id] = user
		}
	}
	if !maps.Equal(owners, indexed) {
		t.Errorf("owners by hash %v, by user sets %v", owners, indexed)
	}
	all := client.ZRange(ctx, "{x:}channels", 0, -1).Val()
	if want := slices.Sorted(maps.Keys(owners)); !slices.Equal(all, want) {
		t.Errorf("index %v, want %v", all, want)
	}
}

// signIn makes a session cookie for user, calls mgr's SubscribeHandler with
// it and returns the channel it opened.
func signIn(t *testing.T, mgr *sessionpush.Manager, cookies *sessions.CookieStore, user string) string {
	t.Helper()
	blank := httptest.NewRequest(http.MethodGet, "/", nil)
	s, _ := cookies.New(blank, "session")
	s.Values["user"] = user
	saved := httptest.NewRecorder()
	if err := s.Save(blank, saved); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, "/subscribe", nil)
	req.Header.Set("Accept", "text/plain")
	for _, c := range saved.Result().Cookies() {
		req.AddCookie(c)
	}
	w := httptest.NewRecorder()
	mgr.SubscribeHandler().ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("/subscribe as %s answered %d %s", user, w.Code, w.Body)
	}
	return w.Body.String()
}

// newManager returns a Manager on store and rl with a cookie session store
// and an idle timeout of a minute, and the session store.
func newManager(t *testing.T, store sessionpush.Store, rl relay.Relay) (*sessionpush.Manager, *sessions.CookieStore) {
	t.Helper()
	cookies := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions:    cookies,
		Store:       store,
		Relay:       rl,
		IdleTimeout: time.Minute,
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return mgr, cookies
}

func TestManagerExpiresIdleChannels(t *testing.T) {
	_, client := startRedis(t, nil)
	ctx := t.Context()
	store := redisstore.New(client, redisstore.Options{Prefix: freshPrefix()})
	rl := sessionpushtest.NewRelay()
	mgr, cookies := newManager(t, store, rl)

	idle := signIn(t, mgr, cookies, "alice")
	fresh := signIn(t, mgr, cookies, "carol")
	if rec, ok, err := store.Get(ctx, idle); !ok || err != nil || rec.User != "alice" || time.Since(rec.LastSeen) > time.Minute {
		t.Fatalf("store after /subscribe: %+v, %v, %v", rec, ok, err)
	}
	if _, err := store.Touch(ctx, idle, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}

	n, err := mgr.ExpireIdle(ctx)
	if n != 1 || err != nil {
		t.Fatalf("ExpireIdle = %d, %v; want 1 closed", n, err)
	}
	if rl.IsOpen(idle) {
		t.Error("the relay still has the idle channel")
	}
	if _, ok, err := store.Get(ctx, idle); ok || err != nil {
		t.Errorf("the store still has the idle channel: %v, %v", ok, err)
	}
	if recs, err := store.ByUser(ctx, "alice"); len(recs) != 0 || err != nil {
		t.Errorf("ByUser(alice) = %v, %v", recs, err)
	}
	if err := mgr.PushJSON(ctx, idle, "hi"); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Errorf("push to the expired channel = %v, want ErrChannelNotFound", err)
	}
	if ok, err := mgr.Exists(ctx, fresh); !ok || err != nil {
		t.Errorf("the fresh channel: Exists = %v, %v", ok, err)
	}
	if n, err := mgr.ExpireIdle(ctx); n != 0 || err != nil {
		t.Errorf("second ExpireIdle = %d, %v; want 0", n, err)
	}
}

// countingRelay counts the Close calls of each channel.
type countingRelay struct {
	*sessionpushtest.Relay
	mu     sync.Mutex
	closes map[string]int
}

func (r *countingRelay) Close(ctx context.Context, channel string) error {
	r.mu.Lock()
	r.closes[channel]++
	r.mu.Unlock()
	return r.Relay.Close(ctx, channel)
}

func TestTwoManagersCloseEachIdleChannelOnce(t *testing.T) {
	srv, client := startRedis(t, nil)
	ctx := t.Context()
	prefix := freshPrefix()
	rl := &countingRelay{Relay: sessionpushtest.NewRelay(), closes: map[string]int{}}
	// Two instances, each with its own Redis client and Store (small pages,
	// so that their walks interleave), and one shared relay.
	client2 := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { client2.Close() })
	mgr1, _ := newManager(t, redisstore.New(client, redisstore.Options{Prefix: prefix, PageSize: 16}), rl)
	mgr2, _ := newManager(t, redisstore.New(client2, redisstore.Options{Prefix: prefix, PageSize: 16}), rl)
	store := redisstore.New(client, redisstore.Options{Prefix: prefix})

	const idle, fresh = 200, 5
	now := time.Now()
	var idleIDs, freshIDs []string
	for i := range idle + fresh {
		id := uuid.NewString()
		if _, err := rl.Open(ctx, id); err != nil {
			t.Fatal(err)
		}
		seen := now
		if i < idle {
			seen = now.Add(-time.Hour)
			idleIDs = append(idleIDs, id)
		} else {
			freshIDs = append(freshIDs, id)
		}
		if err := store.Add(ctx, sessionpush.Record{ID: id, User: fmt.Sprint("u", i%7), Opened: seen, LastSeen: seen}); err != nil {
			t.Fatal(err)
		}
	}

	var (
		closed [2]int
		errs   [2]error
		wg     sync.WaitGroup
	)
	start := make(chan struct{})
	for i, m := range []*sessionpush.Manager{mgr1, mgr2} {
		wg.Go(func() {
			<-start
			closed[i], errs[i] = m.ExpireIdle(ctx)
		})
	}
	close(start)
	wg.Wait()

	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	if closed[0]+closed[1] != idle {
		t.Errorf("the managers closed %d + %d channels, want %d in all", closed[0], closed[1], idle)
	}
	t.Logf("manager 1 closed %d, manager 2 closed %d", closed[0], closed[1])
	for _, id := range idleIDs {
		if n := rl.closes[id]; n != 1 {
			t.Errorf("idle channel %s: relay Close called %d times, want 1", id, n)
		}
		if rl.IsOpen(id) {
			t.Errorf("idle channel %s is still open", id)
		}
	}
	for _, id := range freshIDs {
		if n := rl.closes[id]; n != 0 || !rl.IsOpen(id) {
			t.Errorf("fresh channel %s: %d Close calls, open %v", id, n, rl.IsOpen(id))
		}
	}
	var left []string
	for r, err := range store.All(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, r.ID)
	}
	slices.Sort(left)
	if !slices.Equal(left, slices.Sorted(slices.Values(freshIDs))) {
		t.Errorf("the store holds %d channels, want the %d fresh ones", len(left), fresh)
	}
}

func TestRedisDownAndBack(t *testing.T) {
	// A large pool keeps go-redis from tripping its dial circuit breaker
	// while Redis is down, which would make the first calls after the
	// restart fail fast until its once-a-second probe succeeds.
	srv, client := startRedis(t, &redis.Options{PoolSize: 1000})
	ctx := t.Context()
	s := redisstore.New(client, redisstore.Options{Prefix: freshPrefix()})
	rec := sessionpush.Record{ID: "a", User: "alice", Opened: time.Now(), LastSeen: time.Now()}
	if err := s.Add(ctx, rec); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	calls := map[string]func(context.Context) error{
		"Add": func(ctx context.Context) error { return s.Add(ctx, rec) },
		"Get": func(ctx context.Context) error { _, _, err := s.Get(ctx, "a"); return err },
		"ByUser": func(ctx context.Context) error {
			_, err := s.ByUser(ctx, "alice")
			return err
		},
		"All": func(ctx context.Context) error {
			for _, err := range s.All(ctx) {
				if err != nil {
					return err
				}
			}
			return nil
		},
		"Touch":  func(ctx context.Context) error { _, err := s.Touch(ctx, "a", time.Now()); return err },
		"Remove": func(ctx context.Context) error { _, err := s.Remove(ctx, "a"); return err },
	}
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		began := time.Now()
		err := calls[name](ctx)
		cancel()
		if err == nil || !strings.HasPrefix(err.Error(), "redisstore: ") {
			t.Errorf("%s with Redis down = %v, want an error starting with \"redisstore: \"", name, err)
		}
		if d := time.Since(began); d > 5*time.Second {
			t.Errorf("%s with Redis down took %v despite a 300ms deadline", name, d)
		}
	}

	srv.Start() // without persistence: empty
	if _, ok, err := s.Get(ctx, "a"); ok || err != nil {
		t.Fatalf("Get after the restart = %v, %v; want an empty store", ok, err)
	}
	if err := s.Add(ctx, rec); err != nil { // runs its script again after NOSCRIPT
		t.Fatalf("Add after the restart = %v", err)
	}
	if found, err := s.Touch(ctx, "a", rec.LastSeen.Add(time.Second)); !found || err != nil {
		t.Fatalf("Touch after the restart = %v", err)
	}
	if recs, err := s.ByUser(ctx, "alice"); len(recs) != 1 || err != nil {
		t.Fatalf("ByUser after the restart = %v, %v", recs, err)
	}
	if removed, err := s.Remove(ctx, "a"); !removed || err != nil {
		t.Fatalf("Remove after the restart = %v, %v", removed, err)
	}
}

// TestCountChannels counts what the index holds, across two Managers'
// stores on one Redis, through Manager.CountChannels as the metrics
// handler asks it.
func TestCountChannels(t *testing.T) {
	_, client := startRedis(t, nil)
	ctx := t.Context()
	a := redisstore.New(client, redisstore.Options{Prefix: "n:"})
	b := redisstore.New(client, redisstore.Options{Prefix: "n:"})
	other := redisstore.New(client, redisstore.Options{Prefix: "m:"})
	count := func(s *redisstore.Store) int {
		t.Helper()
		n, err := s.CountChannels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(a); n != 0 {
		t.Fatalf("empty store counts %d", n)
	}
	for i, id := range []string{"c1", "c2", "c3"} {
		if err := []*redisstore.Store{a, b, a}[i].Add(ctx, sessionpush.Record{ID: id, User: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Add(ctx, sessionpush.Record{ID: "c9", User: "bob"}); err != nil {
		t.Fatal(err)
	}
	if na, nb, no := count(a), count(b), count(other); na != 3 || nb != 3 || no != 1 {
		t.Fatalf("counts a=%d b=%d other=%d, want 3 3 1", na, nb, no)
	}
	if _, err := b.Remove(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: sessions.NewCookieStore(securecookie.GenerateRandomKey(32)), Store: a})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := mgr.CountChannels(ctx); n != 2 || err != nil {
		t.Fatalf("Manager.CountChannels = %d, %v; want 2", n, err)
	}
	if st := mgr.Stats(); st.OpenChannels != -1 {
		t.Errorf("Stats().OpenChannels = %d; a Store that counts with I/O is not asked there", st.OpenChannels)
	}
	client.Close()
	if _, err := a.CountChannels(ctx); err == nil || !strings.Contains(err.Error(), "redisstore: count channels") {
		t.Errorf("CountChannels on a closed client: %v, want an error naming the operation", err)
	}
}
