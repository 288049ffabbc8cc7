package sessionpush_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

func TestBroadcastReachesEachSessionOnce(t *testing.T) {
	a := newApp(t, nil)
	var subs []sessionpush.Subscription
	var streams []*stream
	for _, user := range []string{"alice", "bob", "carol"} {
		b := a.browser().login(user)
		sub := b.subscribe()
		es, code := b.listen(sub.URL)
		if code != 200 {
			t.Fatalf("listen: %d", code)
		}
		subs, streams = append(subs, sub), append(streams, es)
	}
	n, err := a.mgr.Broadcast(context.Background(), map[string]string{"news": "hello"})
	if n.Channels != 3 || err != nil {
		t.Fatalf("Broadcast = %+v, %v; want 3 channels, nil", n, err)
	}
	for i, sub := range subs {
		if ev, ok := streams[i].next(); !ok || ev.Data != `{"news":"hello"}` {
			t.Fatalf("listener %d got %+v", i, ev)
		}
		info, err := a.relay.Info(context.Background(), sub.Channel)
		if err != nil || info.Messages != 1 {
			t.Fatalf("channel %d holds %+v (%v), want exactly 1 message", i, info, err)
		}
	}
}

func TestPushUserReachesAllSessionsOfOneUser(t *testing.T) {
	a := newApp(t, nil)
	a1 := a.browser().login("alice").subscribe()
	a2 := a.browser().login("alice").subscribe()
	bob := a.browser().login("bob").subscribe()
	if a1.Channel == a2.Channel {
		t.Fatal("two sessions of one user share a channel")
	}
	n, err := a.mgr.PushUser(context.Background(), "alice", "for alice")
	if n != 2 || err != nil {
		t.Fatalf("PushUser = %d, %v; want 2, nil", n, err)
	}
	for ch, want := range map[string]int{a1.Channel: 1, a2.Channel: 1, bob.Channel: 0} {
		info, _ := a.relay.Info(context.Background(), ch)
		if info.Messages != want {
			t.Errorf("channel %s holds %d messages, want %d", ch, info.Messages, want)
		}
	}
	if n, err := a.mgr.PushUser(context.Background(), "nobody", 1); n != 0 || err != nil {
		t.Fatalf("PushUser to a user without channels = %d, %v", n, err)
	}
}

func TestPushOnlyToOpenChannels(t *testing.T) {
	a := newApp(t, nil)
	ctx := context.Background()
	b := a.browser().login("alice")
	sub := b.subscribe()
	if err := a.mgr.PushJSON(ctx, sub.Channel, 1); err != nil {
		t.Fatalf("push to an open channel: %v", err)
	}
	cases := map[string]struct {
		id   string
		want error
	}{
		"unknown":   {uuid.NewString(), sessionpush.ErrChannelNotFound},
		"malformed": {"../../admin", sessionpush.ErrInvalidChannel},
		"empty":     {"", sessionpush.ErrInvalidChannel},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := a.mgr.PushJSON(ctx, tc.id, 1); !errors.Is(err, tc.want) {
				t.Fatalf("PushJSON = %v, want %v", err, tc.want)
			}
		})
	}
	b.status("POST", "/logout", nil)
	if err := a.mgr.PushJSON(ctx, sub.Channel, 1); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Fatalf("push after logout = %v, want ErrChannelNotFound", err)
	}
}

func TestPushToChannelTheRelayLost(t *testing.T) {
	store := sessionpush.NewMemoryStore()
	a := newApp(t, func(c *sessionpush.Config) { c.Store = store })
	sub := a.browser().login("alice").subscribe()
	a.relay.Close(context.Background(), sub.Channel) // e.g. the relay restarted
	if err := a.mgr.PushJSON(context.Background(), sub.Channel, 1); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Fatalf("push = %v, want ErrChannelNotFound", err)
	}
	if _, ok, _ := store.Get(context.Background(), sub.Channel); ok {
		t.Fatal("the store still holds the channel the relay lost")
	}
}

func TestExists(t *testing.T) {
	a := newApp(t, nil)
	ctx := context.Background()
	sub := a.browser().login("alice").subscribe()
	if ok, err := a.mgr.Exists(ctx, sub.Channel); !ok || err != nil {
		t.Fatalf("Exists(open) = %v, %v", ok, err)
	}
	if ok, err := a.mgr.Exists(ctx, uuid.NewString()); ok || err != nil {
		t.Fatalf("Exists(unknown) = %v, %v", ok, err)
	}
	if _, err := a.mgr.Exists(ctx, "x"); !errors.Is(err, sessionpush.ErrInvalidChannel) {
		t.Fatalf("Exists(malformed) = %v", err)
	}
	a.relay.Close(ctx, sub.Channel)
	if ok, err := a.mgr.Exists(ctx, sub.Channel); ok || err != nil {
		t.Fatalf("Exists(lost by the relay) = %v, %v", ok, err)
	}
}

func TestPushBadInputPublishesNothing(t *testing.T) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{MaxMessageSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	_, ch, err := kit.SignIn(newRequest(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := map[string]struct {
		push func() error
		want error
	}{
		"over the size limit": {func() error { return kit.Manager.PushJSON(ctx, ch, strings.Repeat("x", 15)) }, sessionpush.ErrMessageTooLarge},
		"raw over the limit": {func() error {
			_, err := kit.Manager.Push(ctx, ch, sessionpush.Message{Body: make([]byte, 17)})
			return err
		}, sessionpush.ErrMessageTooLarge},
		"channel value":  {func() error { return kit.Manager.PushJSON(ctx, ch, make(chan int)) }, nil},
		"NaN":            {func() error { return kit.Manager.PushJSON(ctx, ch, math.NaN()) }, nil},
		"broadcast func": {func() error { _, err := kit.Manager.Broadcast(ctx, func() {}); return err }, nil},
		"user too large": {func() error {
			_, err := kit.Manager.PushUser(ctx, "alice", strings.Repeat("y", 20))
			return err
		}, sessionpush.ErrMessageTooLarge},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := tc.push()
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if got := kit.Relay.Published(); len(got) != 0 {
				t.Fatalf("published %d messages", len(got))
			}
		})
	}
	// Exactly at the limit passes.
	if _, err := kit.Manager.Push(ctx, ch, sessionpush.Message{Body: make([]byte, 16)}); err != nil {
		t.Fatalf("push at the limit: %v", err)
	}
}

// faultyRelay fails publishes to one channel and counts concurrent publishes.
type faultyRelay struct {
	*sessionpushtest.Relay
	failing           string
	inflight, maxSeen atomic.Int64
}

var errRelayDown = errors.New("relay down")

func (f *faultyRelay) Publish(ctx context.Context, ch string, m relay.Message) (relay.Receipt, error) {
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		old := f.maxSeen.Load()
		if n <= old || f.maxSeen.CompareAndSwap(old, n) {
			break
		}
	}
	if ch == f.failing {
		return relay.Receipt{}, errRelayDown
	}
	return f.Relay.Publish(ctx, ch, m)
}

func TestBroadcastJoinsFailuresAndBoundsConcurrency(t *testing.T) {
	fr := &faultyRelay{Relay: sessionpushtest.NewRelay()}
	a := newApp(t, func(c *sessionpush.Config) { c.Relay = fr; c.Concurrency = 2 })
	var subs []sessionpush.Subscription
	for i := range 8 {
		subs = append(subs, a.browser().login("u"+string(rune('a'+i))).subscribe())
	}
	fr.failing = subs[3].Channel
	n, err := a.mgr.Broadcast(context.Background(), "hi")
	if n.Channels != 7 || !errors.Is(err, errRelayDown) || !strings.Contains(err.Error(), subs[3].Channel) {
		t.Fatalf("Broadcast = %d, %v; want 7 and the failure naming its channel", n, err)
	}
	if m := fr.maxSeen.Load(); m > 2 || m < 1 {
		t.Fatalf("%d publishes at once, want at most 2", m)
	}
}

// fullRelay refuses Open and Publish with relay.ErrRelayFull while full is
// set, as nchan.Client does when Nchan answers 507.
type fullRelay struct {
	*sessionpushtest.Relay
	full atomic.Bool
}

func (f *fullRelay) Open(ctx context.Context, ch string) (string, error) {
	if f.full.Load() {
		return "", fmt.Errorf("open %s: %w", ch, relay.ErrRelayFull)
	}
	return f.Relay.Open(ctx, ch)
}

func (f *fullRelay) Publish(ctx context.Context, ch string, m relay.Message) (relay.Receipt, error) {
	if f.full.Load() {
		return relay.Receipt{}, fmt.Errorf("publish %s: %w", ch, relay.ErrRelayFull)
	}
	return f.Relay.Publish(ctx, ch, m)
}

// TestSubscribeWhenRelayFull: while the relay is out of memory,
// /subscribe answers 503 (not 502) through the ErrorHandler with a
// StatusError wrapping relay.ErrRelayFull, and the browser sees no internal
// text; once memory is free, the same session subscribes and is pushed to.
func TestSubscribeWhenRelayFull(t *testing.T) {
	fr := &fullRelay{Relay: sessionpushtest.NewRelay()}
	var handed atomic.Value
	a := newApp(t, func(c *sessionpush.Config) {
		c.Relay = fr
		c.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
			handed.Store(err)
			var se *sessionpush.StatusError
			if !errors.As(err, &se) {
				t.Errorf("ErrorHandler got %T %v; want a *StatusError", err, err)
				return
			}
			http.Error(w, http.StatusText(se.Status), se.Status)
		}
	})
	alice := a.browser().login("alice")
	fr.full.Store(true)
	resp := alice.do("POST", "/subscribe", nil)
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(body, "memory") {
		t.Fatalf("/subscribe while the relay is full: %d %q; want 503 without the cause", resp.StatusCode, body)
	}
	err, _ := handed.Load().(error)
	var se *sessionpush.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable || !errors.Is(err, relay.ErrRelayFull) {
		t.Fatalf("ErrorHandler got %v; want a 503 StatusError wrapping relay.ErrRelayFull", err)
	}
	fr.full.Store(false)
	sub := alice.subscribe()
	if _, err := a.mgr.Push(context.Background(), sub.Channel, sessionpush.Message{Body: []byte(`"back"`)}); err != nil {
		t.Fatalf("push once memory is free: %v", err)
	}
}
