package sessionpush_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// TestStatsOverHTTP drives an application over real HTTP and checks every
// counter after each step against what the step must have done.
func TestStatsOverHTTP(t *testing.T) {
	a := newApp(t, func(c *sessionpush.Config) { c.IdleTimeout = 1 })
	ctx := context.Background()
	var want sessionpush.Stats
	want.OpenChannels = 0
	check := func(step string) {
		t.Helper()
		got := a.mgr.Stats()
		got.Relay = nil // the relay's own, checked elsewhere
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("after %s:\n got  %+v\n want %+v", step, got, want)
		}
	}
	check("New")

	alice := a.browser().login("alice")
	as := alice.subscribe()
	want.ChannelsOpened, want.OpenChannels = 1, 1
	check("alice subscribes")
	alice.subscribe()
	check("alice subscribes again")

	alice.push(`1`)
	alice.push(`2`)
	want.Pushes = 2
	check("two pushes")

	bob := a.browser().login("bob")
	bob.subscribe()
	want.ChannelsOpened, want.OpenChannels = 2, 2
	bob.login("carol") // another user on bob's session
	want.ChannelsClosed.Replaced, want.OpenChannels = 1, 1
	check("user change")
	carol := bob
	cs := carol.subscribe()
	want.ChannelsOpened, want.OpenChannels = 3, 2
	check("carol subscribes")

	if code := alice.status("POST", "/logout", nil); code != 200 {
		t.Fatal(code)
	}
	want.ChannelsClosed.Logout, want.OpenChannels = 1, 1
	check("logout")

	// Refusals.
	stranger := a.browser()
	stranger.status("POST", "/subscribe", nil)
	want.Refused.Subscribe.NotSignedIn = 1
	carol.status("POST", "/subscribe", nil, "Sec-Fetch-Site", "cross-site")
	want.Refused.Subscribe.CrossOrigin = 1
	carol.status("DELETE", "/subscribe", nil)
	want.Refused.Subscribe.Method = 1
	stranger.status("GET", cs.URL, nil)
	want.Refused.Listen.NotSignedIn = 1
	alice.login("alice")
	alice.status("GET", cs.URL, nil)
	want.Refused.Listen.NotOwner = 1
	alice.status("GET", as.URL, nil) // her closed channel
	want.Refused.Listen.NotOwner = 2
	alice.status("GET", "/sub/0", nil)
	want.Refused.Listen.InvalidID = 1
	alice.status("GET", "/authorize", nil, "X-Channel-Id", cs.Channel)
	want.Refused.Authorize.NotOwner = 1
	alice.status("GET", "/authorize", nil, "X-Channel-Id", "")
	want.Refused.Authorize.InvalidID = 1
	stranger.status("GET", "/authorize", nil, "X-Channel-Id", cs.Channel)
	want.Refused.Authorize.NotSignedIn = 1
	if code := carol.status("GET", "/authorize", nil, "X-Channel-Id", cs.Channel); code != 204 {
		t.Fatalf("authorize the owner: %d", code)
	}
	check("refusals")

	// Pushes that fail, from application code.
	if err := a.mgr.PushJSON(ctx, "nope", 1); !errors.Is(err, sessionpush.ErrInvalidChannel) {
		t.Fatal(err)
	}
	want.PushFailures.InvalidID = 1
	if err := a.mgr.PushJSON(ctx, cs.Channel, func() {}); err == nil {
		t.Fatal("pushed a func")
	}
	want.PushFailures.Encode = 1
	big := strings.Repeat("x", 64<<10+1)
	if err := a.mgr.PushJSON(ctx, cs.Channel, big); !errors.Is(err, sessionpush.ErrMessageTooLarge) {
		t.Fatal(err)
	}
	if _, err := a.mgr.Broadcast(ctx, big); !errors.Is(err, sessionpush.ErrMessageTooLarge) {
		t.Fatal(err)
	}
	want.PushFailures.TooLarge = 2
	if err := a.mgr.PushJSON(ctx, as.Channel, 1); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Fatal(err)
	}
	want.PushFailures.NotFound = 1
	check("failed pushes")

	// PushUser and Broadcast count one push per channel.
	alice.subscribe()
	want.ChannelsOpened, want.OpenChannels = 4, 2
	if n, err := a.mgr.PushUser(ctx, "carol", 1); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	if n, err := a.mgr.Broadcast(ctx, 2); n.Channels != 2 || err != nil {
		t.Fatal(n, err)
	}
	want.Pushes += 3
	check("PushUser and Broadcast")

	// The relay loses carol's channel: a listener of hers passes the
	// kit's check and the relay refuses it; then /subscribe notices and
	// binds a new channel.
	if err := a.mgr.Relay().Close(ctx, cs.Channel); err != nil {
		t.Fatal(err)
	}
	if code := carol.status("GET", cs.URL, nil); code != 403 {
		t.Fatalf("listener of a lost channel: %d", code)
	}
	want.Refused.Listen.RelayRefused = 1
	check("relay refusal")
	if cs2 := carol.subscribe(); cs2.Channel == cs.Channel {
		t.Fatal("lost channel came back")
	}
	want.ChannelsClosed.Lost, want.ChannelsOpened = 1, 5
	check("lost and replaced")

	// The application closes one; the other expires (IdleTimeout is 1ns).
	if err := a.mgr.CloseChannel(ctx, carol.subscribe().Channel); err != nil {
		t.Fatal(err)
	}
	want.ChannelsClosed.Closed, want.OpenChannels = 1, 1
	if n, err := a.mgr.ExpireIdle(ctx); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	want.ChannelsClosed.Expired, want.OpenChannels = 1, 0
	check("close and expiry")
	if want.RelayErrors != 0 {
		t.Fatal("unreachable")
	}
}

// statsRelay is a recording relay whose requests can be made to fail, and
// that reports stats of its own.
type statsRelay struct {
	*sessionpushtest.Relay
	fail  atomic.Bool
	scrap atomic.Int64 // RelayStats calls
}

var errStatsRelayDown = errors.New("relay down")

func (f *statsRelay) Publish(ctx context.Context, ch string, m relay.Message) (relay.Receipt, error) {
	if f.fail.Load() {
		return relay.Receipt{}, fmt.Errorf("publish: %w", errStatsRelayDown)
	}
	return f.Relay.Publish(ctx, ch, m)
}

func (f *statsRelay) Open(ctx context.Context, ch string) (string, error) {
	if f.fail.Load() {
		return "", fmt.Errorf("open: %w", errStatsRelayDown)
	}
	return f.Relay.Open(ctx, ch)
}

func (f *statsRelay) Info(ctx context.Context, ch string) (relay.Info, error) {
	if f.fail.Load() {
		return relay.Info{}, fmt.Errorf("info: %w", errStatsRelayDown)
	}
	return f.Relay.Info(ctx, ch)
}

func (f *statsRelay) RelayStats() []relay.Stat {
	n := f.scrap.Add(1)
	return []relay.Stat{
		{Name: "scrapes_total", Help: "RelayStats calls.", Value: float64(n)},
		{Name: "listeners", Help: "Listeners now.", Gauge: true, Labels: [][2]string{{"transport", "websocket"}}, Value: 3},
	}
}

// uncountedStore hides MemoryStore.Len: a Store that cannot count.
type uncountedStore struct{ sessionpush.Store }

// statsKit returns a Manager on rel and st with a cookie store, and a signed-in
// request maker.
func statsKit(t *testing.T, rel relay.Relay, st sessionpush.Store) (*sessionpush.Manager, func(user string) (*http.Request, string)) {
	t.Helper()
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	store.Options.HttpOnly, store.Options.SameSite = true, http.SameSiteLaxMode
	m, err := sessionpush.New(sessionpush.Config{Sessions: store, Relay: rel, Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	signIn := func(user string) (*http.Request, string) {
		t.Helper()
		r := httptest.NewRequest("POST", "/subscribe", nil)
		s, _ := store.New(r, "session")
		s.Values["user"] = user
		rec := httptest.NewRecorder()
		if err := s.Save(r, rec); err != nil {
			t.Fatal(err)
		}
		r = httptest.NewRequest("POST", "/subscribe", nil)
		r.Header.Set("Accept", "text/plain")
		for _, c := range rec.Result().Cookies() {
			r.AddCookie(c)
		}
		w := httptest.NewRecorder()
		m.SubscribeHandler().ServeHTTP(w, r)
		return r, strings.TrimSpace(w.Body.String())
	}
	return m, signIn
}

func TestStatsRelayFailures(t *testing.T) {
	rel := &statsRelay{Relay: sessionpushtest.NewRelay()}
	m, signIn := statsKit(t, rel, uncountedStore{sessionpush.NewMemoryStore()})
	ctx := context.Background()
	_, id := signIn("alice")
	_, id2 := signIn("alice")

	s := m.Stats()
	if s.OpenChannels != -1 {
		t.Errorf("OpenChannels %d from a store that cannot count", s.OpenChannels)
	}
	if s.ChannelsOpened != 2 {
		t.Errorf("ChannelsOpened %d", s.ChannelsOpened)
	}
	if len(s.Relay) != 2 || s.Relay[0].Name != "scrapes_total" || s.Relay[0].Value != 1 || s.Relay[1].Labels[0] != [2]string{"transport", "websocket"} {
		t.Errorf("Relay stats %+v", s.Relay)
	}
	if s2 := m.Stats(); s2.Relay[0].Value != 2 {
		t.Errorf("relay stats not read again: %+v", s2.Relay)
	}

	rel.fail.Store(true)
	if err := m.PushJSON(ctx, id, 1); !errors.Is(err, errStatsRelayDown) {
		t.Fatal(err)
	}
	n, err := m.PushUser(ctx, "alice", 1)
	if n != 0 || !errors.Is(err, errStatsRelayDown) {
		t.Fatal(n, err)
	}
	if ok, err := m.Exists(ctx, id2); ok || !errors.Is(err, errStatsRelayDown) {
		t.Fatal(ok, err)
	}
	if _, id := signIn("bob"); id != http.StatusText(http.StatusBadGateway) {
		t.Fatalf("/subscribe with the relay down answered %q", id)
	}
	s = m.Stats()
	if s.PushFailures.Relay != 3 || s.RelayErrors != 5 || s.Refused.Subscribe.Error != 1 || s.Pushes != 0 {
		t.Errorf("after failures: %+v", s)
	}

	rel.fail.Store(false)
	if err := m.PushJSON(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.Pushes != 1 || s.RelayErrors != 5 {
		t.Errorf("after recovery: %+v", s)
	}
}

// TestStatsConcurrent counts from many goroutines; -race checks the
// counters, the totals check that none is lost.
func TestStatsConcurrent(t *testing.T) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	_, id, err := kit.SignIn(newRequest(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				kit.Manager.PushJSON(context.Background(), id, 1)
				kit.Manager.PushJSON(context.Background(), "bad", 1)
				_ = kit.Manager.Stats()
			}
		})
	}
	wg.Wait()
	s := kit.Manager.Stats()
	if s.Pushes != workers*each || s.PushFailures.InvalidID != workers*each || s.OpenChannels != 1 {
		t.Errorf("%+v", s)
	}
}

// Reading the Manager's counters, here after two sign-ins, three pushes
// (one to a channel that is not open) and a logout.
func ExampleManager_Stats() {
	kit, _ := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	_, alice, _ := kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice")
	kit.SignIn(httptest.NewRequest("GET", "/", nil), "bob")
	kit.Manager.PushJSON(ctx, alice, "one")
	kit.Manager.PushUser(ctx, "bob", "two")
	kit.Manager.PushJSON(ctx, "00000000-0000-4000-8000-000000000000", "nobody")
	kit.Manager.CloseChannel(ctx, alice)

	s := kit.Manager.Stats()
	fmt.Println("opened:", s.ChannelsOpened, "closed:", s.ChannelsClosed.Closed, "open now:", s.OpenChannels)
	fmt.Println("pushes:", s.Pushes, "not found:", s.PushFailures.NotFound)
	fmt.Println("relay errors:", s.RelayErrors, "relay stats:", len(s.Relay))
	// Output:
	// opened: 2 closed: 1 open now: 1
	// pushes: 2 not found: 1
	// relay errors: 0 relay stats: 0
}

// countingStore is a MemoryStore seen through the Store interface, that
// counts by CountChannels only, as a store on a server would.
type countingStore struct {
	sessionpush.Store
	mem   *sessionpush.MemoryStore
	fail  atomic.Bool
	calls atomic.Int64
}

var errCountFail = errors.New("count failed")

func (s *countingStore) CountChannels(ctx context.Context) (int, error) {
	s.calls.Add(1)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.fail.Load() {
		return 0, errCountFail
	}
	return s.mem.Len(), nil
}

func TestCountChannels(t *testing.T) {
	ctx := context.Background()
	mem := sessionpush.NewMemoryStore()
	cs := &countingStore{Store: mem, mem: mem}
	rel := sessionpushtest.NewRelay()
	m, signIn := statsKit(t, rel, cs)
	signIn("alice")
	signIn("bob")

	if s := m.Stats(); s.OpenChannels != -1 || cs.calls.Load() != 0 {
		t.Errorf("Stats: OpenChannels %d, %d counts: Stats must not count at a cost", s.OpenChannels, cs.calls.Load())
	}
	if n, err := m.CountChannels(ctx); n != 2 || err != nil {
		t.Errorf("CountChannels: %d, %v", n, err)
	}
	cs.fail.Store(true)
	if _, err := m.CountChannels(ctx); !errors.Is(err, errCountFail) {
		t.Errorf("failing count: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	cs.fail.Store(false)
	if _, err := m.CountChannels(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("count with a cancelled context: %v", err)
	}

	// A MemoryStore counts from memory; a Store that cannot count says so.
	m2, signIn2 := statsKit(t, sessionpushtest.NewRelay(), nil)
	signIn2("carol")
	if n, err := m2.CountChannels(ctx); n != 1 || err != nil {
		t.Errorf("MemoryStore: %d, %v", n, err)
	}
	m3, _ := statsKit(t, sessionpushtest.NewRelay(), uncountedStore{sessionpush.NewMemoryStore()})
	if _, err := m3.CountChannels(ctx); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("a Store that cannot count: %v", err)
	}
}

// TestStatsCloseCountsOnce closes one channel from many goroutines at once,
// by every way there is: it counts as closed once.
func TestStatsCloseCountsOnce(t *testing.T) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler), IdleTimeout: 1})
	if err != nil {
		t.Fatal(err)
	}
	r, id, err := kit.SignIn(newRequest(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { kit.Manager.CloseChannel(ctx, id) })
		wg.Go(func() { kit.Manager.ExpireIdle(ctx) })
		wg.Go(func() { kit.Manager.SignOut(httptest.NewRecorder(), r.Clone(ctx)) })
	}
	wg.Wait()
	c := kit.Manager.Stats().ChannelsClosed
	if n := c.Closed + c.Expired + c.Logout + c.Lost + c.Replaced; n != 1 {
		t.Errorf("one channel closed %d times: %+v", n, c)
	}
}

// BenchmarkStats measures a snapshot, as every metrics scrape takes one.
// Run: go test -run '^$' -bench Stats -benchmem .
func BenchmarkStats(b *testing.B) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if s := kit.Manager.Stats(); s.OpenChannels != 0 {
			b.Fatal(s.OpenChannels)
		}
	}
}
