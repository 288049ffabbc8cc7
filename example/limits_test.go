package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable time for the send limit.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestBroadcastAdminOnly: without -admin nobody may broadcast; with it only
// that user. A refused broadcast publishes nothing.
func TestBroadcastAdminOnly(t *testing.T) {
	for _, admin := range []string{"", "alice"} {
		t.Run(fmt.Sprintf("admin=%q", admin), func(t *testing.T) {
			a := newTestAppWith(t, appConfig{Admin: admin})
			alice, bob := a.browser(t), a.browser(t)
			alice.mustLogin("alice")
			bob.mustLogin("bob")
			sub := bob.subscribe()
			alice.subscribe()
			want := map[string]int{"alice": http.StatusForbidden, "bob": http.StatusForbidden}
			if admin != "" {
				want["alice"] = http.StatusOK
			}
			for who, b := range map[string]*browser{"alice": alice, "bob": bob} {
				if resp, body := b.postJSON("/broadcast", `"news"`); resp.StatusCode != want[who] {
					t.Errorf("broadcast by %s: %s %s; want %d", who, resp.Status, body, want[who])
				}
			}
			info, err := a.hub.Info(t.Context(), sub.Channel)
			if err != nil {
				t.Fatal(err)
			}
			if wantMsgs := map[bool]int{false: 0, true: 1}[admin != ""]; info.Messages != wantMsgs {
				t.Errorf("bob's channel holds %d messages; want %d", info.Messages, wantMsgs)
			}
		})
	}
}

// TestSendLimit: each session sends sendBurst messages at once (refused and
// malformed ones count), then one per sendEvery; the next gets 429 with
// Retry-After and publishes nothing. Another session has its own bucket.
func TestSendLimit(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	a := newTestAppWith(t, appConfig{Admin: "alice", Now: c.now})
	alice, bob := a.browser(t), a.browser(t)
	alice.mustLogin("alice")
	bob.mustLogin("bob")
	sub := alice.subscribe()
	bob.subscribe()

	if resp, _ := alice.postJSON("/push", `{"bad":`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("malformed push: %s; want 400", resp.Status)
	}
	for i := 1; i < sendBurst; i++ {
		path := "/push"
		if i%2 == 0 {
			path = "/broadcast"
		}
		if resp, body := alice.postJSON(path, fmt.Sprintf(`{"n":%d}`, i)); resp.StatusCode >= 300 {
			t.Fatalf("send %d (%s) within the burst: %s %s", i+1, path, resp.Status, body)
		}
	}
	before, err := a.hub.Info(t.Context(), sub.Channel)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/push", "/broadcast"} {
		resp, body := alice.postJSON(path, `"one too many"`)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "too many") {
			t.Errorf("%s past the burst: %s, Retry-After %q, %s; want 429, 1, a JSON error", path, resp.Status, resp.Header.Get("Retry-After"), body)
		}
	}
	if after, err := a.hub.Info(t.Context(), sub.Channel); err != nil || after.Messages != before.Messages {
		t.Errorf("alice's channel after the refused sends: %+v %v; want %d messages", after, err, before.Messages)
	}
	if resp, body := bob.postJSON("/push", `"mine"`); resp.StatusCode != http.StatusNoContent {
		t.Errorf("bob's push while alice is limited: %s %s; want 204", resp.Status, body)
	}
	c.add(sendEvery)
	if resp, body := alice.postJSON("/push", `"later"`); resp.StatusCode != http.StatusNoContent {
		t.Errorf("alice's push after %v: %s %s; want 204", sendEvery, resp.Status, body)
	}
	if resp, _ := alice.postJSON("/push", `"again"`); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("alice's second push within %v: %s; want 429", sendEvery, resp.Status)
	}
}

// TestLimiterForgetsFullBuckets: the limiter keeps about the sessions of
// the last burst × every, not every session it ever saw.
func TestLimiterForgetsFullBuckets(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	l := newLimiter(2, time.Second, c.now)
	for i := range 100_000 {
		if ok, _ := l.allow(fmt.Sprint(i)); !ok {
			t.Fatalf("key %d refused its first token", i)
		}
		if i%1000 == 999 {
			c.add(3 * time.Second) // every bucket so far is full again
		}
	}
	if n := len(l.buckets); n > 4096 {
		t.Errorf("%d buckets kept after 100,000 keys, 1,000 per 3 s; want at most a few thousand", n)
	}
	for i, want := range []bool{true, true, false} {
		if ok, wait := l.allow("last"); ok != want || !ok && wait != time.Second {
			t.Errorf("token %d of a new key at once: %v, wait %v; want %v (wait 1s when refused)", i+1, ok, wait, want)
		}
	}
}
