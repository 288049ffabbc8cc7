package sessionpush_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/relay"
)

// publishCounter wraps the test relay (the embedded one, which serves
// listeners through the promoted ServeListener) and counts Publish calls
// by channel.
type publishCounter struct {
	*countingRelay
	mu sync.Mutex
	by map[string]int
}

func (p *publishCounter) Publish(ctx context.Context, channel string, m relay.Message) (relay.Receipt, error) {
	p.mu.Lock()
	p.by[channel]++
	p.mu.Unlock()
	return p.countingRelay.Publish(ctx, channel, m)
}

// take returns the counts so far and starts again from zero.
func (p *publishCounter) take() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	by := p.by
	p.by = map[string]int{}
	return by
}

// newBroadcastApp is newApp with Config.BroadcastChannel set and Publish
// calls counted.
func newBroadcastApp(t *testing.T, mod func(*sessionpush.Config)) (*app, *publishCounter) {
	var pc *publishCounter
	a := newApp(t, func(cfg *sessionpush.Config) {
		pc = &publishCounter{countingRelay: cfg.Relay.(*countingRelay), by: map[string]int{}}
		cfg.Relay = pc
		cfg.BroadcastChannel = sessionpush.SuggestedBroadcastChannel
		if mod != nil {
			mod(cfg)
		}
	})
	return a, pc
}

// listenFrom opens an EventSource stream on sub's channel, resuming from
// its cursor as a browser does.
func (b *browser) listenFrom(sub sessionpush.Subscription) *stream {
	b.t.Helper()
	es, code := b.listen(sub.URL + "?last_event_id=" + url.QueryEscape(sub.Cursor))
	if code != 200 {
		b.t.Fatalf("listening to %s: %d", sub.Channel, code)
	}
	return es
}

func expectEvent(t *testing.T, what string, es *stream, want string) {
	t.Helper()
	if ev, ok := es.next(); !ok || ev.Data != want {
		t.Fatalf("%s got %+v (open %v), want %q", what, ev, ok, want)
	}
}

func TestBroadcastChannel(t *testing.T) {
	a, pubs := newBroadcastApp(t, nil)
	bc := sessionpush.SuggestedBroadcastChannel
	ctx := context.Background()

	var (
		browsers []*browser
		subs     []sessionpush.Subscription
		own, all []*stream
	)
	for _, user := range []string{"alice", "bob", "carol"} {
		b := a.browser().login(user)
		sub := b.subscribe()
		if sub.Broadcast == nil || sub.Broadcast.Channel != bc || sub.Broadcast.URL != "/sub/"+bc || sub.Broadcast.Cursor == "" {
			t.Fatalf("%s: subscription %+v has broadcast %+v; want channel %s at /sub/%s with a cursor", user, sub, sub.Broadcast, bc, bc)
		}
		if sub.Channel == bc {
			t.Fatal("a session channel is the broadcast channel")
		}
		browsers, subs = append(browsers, b), append(subs, sub)
		own = append(own, b.listenFrom(sub))
		all = append(all, b.listenFrom(*sub.Broadcast))
	}
	if got := browsers[0].get("/subscribe", "Accept", "text/plain"); got != subs[0].Channel {
		t.Errorf("text/plain /subscribe = %q, want the bare channel %s", got, subs[0].Channel)
	}
	a.waitListeners(bc, 3)
	for _, sub := range subs {
		a.waitListeners(sub.Channel, 1)
	}

	pubs.take()
	n, err := a.mgr.Broadcast(ctx, map[string]string{"news": "hello"})
	if n != (sessionpush.BroadcastResult{Channels: 1, Listeners: 3}) || err != nil {
		t.Fatalf("Broadcast = %+v, %v; want the broadcast channel and its 3 listeners, nil", n, err)
	}
	if got := pubs.take(); len(got) != 1 || got[bc] != 1 {
		t.Fatalf("relay Publish calls of one Broadcast: %v; want one, to %s", got, bc)
	}
	for i := range subs {
		expectEvent(t, fmt.Sprint("broadcast listener ", i), all[i], `{"news":"hello"}`)
		info, err := a.relay.Info(ctx, subs[i].Channel)
		if err != nil || info.Messages != 0 {
			t.Errorf("session channel %d holds %+v (%v) after Broadcast, want no message", i, info, err)
		}
	}
	// Exactly once on the broadcast streams, nothing on the own ones: the
	// next events are the next messages.
	if n, err := a.mgr.Broadcast(ctx, "second"); n.Listeners != 3 || err != nil {
		t.Fatalf("second Broadcast = %+v, %v", n, err)
	}
	for i, b := range browsers {
		b.push(`"own"`)
		expectEvent(t, fmt.Sprint("broadcast listener ", i), all[i], `"second"`)
		expectEvent(t, fmt.Sprint("own listener ", i), own[i], `"own"`)
	}

	// No cap on the broadcast channel: 11 listeners are in.
	dave := a.browser().login("dave") // signed in, never subscribed
	for range 8 {
		dave.listenFrom(*subs[0].Broadcast)
	}
	a.waitListeners(bc, 11)
	// The cap (10) on a session channel: the 11th is refused.
	for i := range 9 {
		if _, code := browsers[0].listen(subs[0].URL); code != 200 {
			t.Fatalf("listener %d on a session channel: %d", i+2, code)
		}
	}
	a.waitListeners(subs[0].Channel, 10)
	if _, code := browsers[0].listen(subs[0].URL); code != 403 {
		t.Errorf("11th listener on a session channel: %d, want 403", code)
	}

	// Who may listen to the broadcast channel: any signed-in session.
	stranger := a.browser()
	if code := stranger.status("GET", "/sub/"+bc, nil, "Accept", "text/event-stream"); code != 403 {
		t.Errorf("broadcast channel without a session: %d, want 403", code)
	}
	if code := dave.status("GET", "/sub/"+strings.ToUpper(bc), nil, "Accept", "text/event-stream"); code != 400 {
		t.Errorf("broadcast channel in upper case: %d, want 400", code)
	}
	for _, tc := range []struct {
		name string
		b    *browser
		id   string
		want int
	}{
		{"subscribed session", browsers[1], bc, 204},
		{"signed in, never subscribed", dave, bc, 204},
		{"no session", stranger, bc, 403},
		{"upper case", dave, strings.ToUpper(bc), 403},
		{"another session's channel", dave, subs[0].Channel, 403},
	} {
		if code := tc.b.status("GET", "/authorize", nil, sessionpush.AuthorizeHeader, tc.id); code != tc.want {
			t.Errorf("authorize, %s: %d, want %d", tc.name, code, tc.want)
		}
	}

	// The broadcast channel is no session channel.
	if ok, err := a.mgr.Exists(ctx, bc); ok || err != nil {
		t.Errorf("Exists(broadcast) = %v, %v; want false, nil", ok, err)
	}
	if _, err := a.mgr.Push(ctx, bc, sessionpush.Message{Body: []byte("x")}); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Errorf("Push to the broadcast channel: %v, want ErrChannelNotFound", err)
	}
	if err := a.mgr.CloseChannel(ctx, bc); !errors.Is(err, sessionpush.ErrChannelNotFound) {
		t.Errorf("CloseChannel(broadcast): %v, want ErrChannelNotFound", err)
	}
	if _, err := a.relay.Info(ctx, bc); err != nil {
		t.Errorf("broadcast channel after CloseChannel: %v, want it open", err)
	}
}

// TestBroadcastChannelNeverExpires ages every record past the idle timeout:
// ExpireIdle closes the idle session channel and leaves the broadcast
// channel open.
func TestBroadcastChannelNeverExpires(t *testing.T) {
	store := sessionpush.NewMemoryStore()
	a, _ := newBroadcastApp(t, func(cfg *sessionpush.Config) {
		cfg.Store = store
		cfg.IdleTimeout = time.Minute
	})
	ctx := context.Background()
	sub := a.browser().login("alice").subscribe()
	for rec, err := range store.All(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if rec.ID == sessionpush.SuggestedBroadcastChannel {
			t.Fatal("the store holds the broadcast channel")
		}
		rec.LastSeen = rec.LastSeen.Add(-time.Hour)
		store.Add(ctx, rec)
	}
	if n, err := a.mgr.ExpireIdle(ctx); n != 1 || err != nil {
		t.Fatalf("ExpireIdle = %d, %v; want the session channel closed", n, err)
	}
	if _, err := a.relay.Info(ctx, sub.Channel); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("session channel after ExpireIdle: %v", err)
	}
	if _, err := a.relay.Info(ctx, sessionpush.SuggestedBroadcastChannel); err != nil {
		t.Errorf("broadcast channel after ExpireIdle: %v, want it open", err)
	}
	if n, err := a.mgr.Broadcast(ctx, "still here"); n != (sessionpush.BroadcastResult{Channels: 1}) || err != nil {
		t.Errorf("Broadcast with nobody listening = %+v, %v; want the channel and no listener, nil", n, err)
	}
}

// TestBroadcastChannelOwnHub checks the relay that New builds: the
// broadcast channel has no listener cap there either, and Broadcast before
// any /subscribe (the channel not open yet) reaches nobody without error.
func TestBroadcastChannelOwnHub(t *testing.T) {
	a := newApp(t, func(cfg *sessionpush.Config) {
		cfg.Relay = nil
		cfg.BroadcastChannel = sessionpush.SuggestedBroadcastChannel
	})
	t.Cleanup(func() { a.mgr.Shutdown(context.Background()) })
	if n, err := a.mgr.Broadcast(context.Background(), "early"); n != (sessionpush.BroadcastResult{}) || err != nil {
		t.Fatalf("Broadcast before any /subscribe = %+v, %v; want nothing reached, nil", n, err)
	}
	b := a.browser().login("alice")
	sub := b.subscribe()
	for range 11 {
		b.listenFrom(*sub.Broadcast)
	}
	a.waitListeners(sessionpush.SuggestedBroadcastChannel, 11)
}

func TestBroadcastChannelConfig(t *testing.T) {
	for _, id := range []string{
		"nope",
		strings.ToUpper(sessionpush.SuggestedBroadcastChannel),
		"b0adca57-0000-1000-8000-000000000000", // version 1
		"{" + sessionpush.SuggestedBroadcastChannel + "}",
	} {
		_, err := sessionpush.New(sessionpush.Config{Sessions: newApp(t, nil).sessions, BroadcastChannel: id})
		if !errors.Is(err, sessionpush.ErrInvalidChannel) {
			t.Errorf("New with BroadcastChannel %q: %v, want ErrInvalidChannel", id, err)
		}
	}
	if _, err := sessionpush.New(sessionpush.Config{Sessions: newApp(t, nil).sessions, BroadcastChannel: uuid.NewString()}); err != nil {
		t.Errorf("New with a random UUIDv4: %v", err)
	}
	// Without it, /subscribe's JSON has no "broadcast".
	a := newApp(t, nil)
	var raw map[string]any
	if err := json.Unmarshal([]byte(readAll(t, a.browser().login("alice").do("POST", "/subscribe", nil))), &raw); err != nil || raw["broadcast"] != nil || raw["channel"] == nil {
		t.Errorf("/subscribe without BroadcastChannel: %v, %v", raw, err)
	}
}
