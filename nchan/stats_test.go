package nchan

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

func TestStatsMoveForTheirEvents(t *testing.T) {
	c, _, fi, _ := legacy(t, Options{MaxRetryWait: 20 * time.Millisecond})
	ctx := ctxTimeout(t, 10*time.Second)
	// step runs f and checks that the stats moved from the last step by
	// exactly what want changes in a zero Stats.
	last := c.Stats()
	step := func(name string, f func(), want func(*Stats)) {
		t.Helper()
		f()
		exp := last
		want(&exp)
		got := c.Stats()
		if got != exp {
			t.Errorf("%s: stats %+v, want %+v", name, got, exp)
		}
		last = got
	}

	step("open", func() {
		if _, err := c.Open(ctx, "s"); err != nil {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Requests.Get++; s.Requests.Put++; s.KnownOpen++ })
	step("publish", func() {
		if _, err := c.Publish(ctx, "s", relay.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Requests.Post++ })
	step("two 503s retried", func() {
		fi.add(503, 503)
		if _, err := c.Info(ctx, "s"); err != nil {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Requests.Get += 3; s.Retries += 2 })
	step("not found", func() {
		if _, err := c.Info(ctx, "nope"); !errors.Is(err, relay.ErrChannelNotFound) {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Requests.Get++; s.Failures.NotFound++ })
	step("invalid ID", func() {
		if _, err := c.Publish(ctx, "a/b", relay.Message{Body: []byte("x")}); !errors.Is(err, relay.ErrInvalidID) {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Failures.Invalid++ })
	step("invalid event name", func() {
		if _, err := c.Publish(ctx, "s", relay.Message{Body: []byte("x"), Event: "a\nb"}); err == nil {
			t.Fatal("accepted")
		}
	}, func(s *Stats) { s.Failures.Invalid++ })
	step("too large", func() {
		fi.add(413)
		if _, err := c.Publish(ctx, "s", relay.Message{Body: []byte("x")}); !errors.Is(err, relay.ErrMessageTooLarge) {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Requests.Post++; s.Failures.TooLarge++ })
	step("unexpected status", func() {
		fi.add(502)
		if _, err := c.Info(ctx, "s"); err == nil {
			t.Fatal("502 accepted")
		}
	}, func(s *Stats) { s.Requests.Get++; s.Failures.Status++ })
	var sent int
	step("timeout", func() {
		for range 1000 {
			fi.add(503)
		}
		before := fi.requests()
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := c.Info(short, "s"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		sent = int(c.Stats().Requests.Get - last.Requests.Get)
		// The last attempt may end with the deadline before it reaches
		// the server.
		if seen := fi.requests() - before; seen != sent && seen != sent-1 || sent < 3 {
			t.Errorf("%d GETs counted, %d reached the server; want several, all or all but the last", sent, seen)
		}
		fi.mu.Lock()
		fi.faults = nil
		fi.mu.Unlock()
	}, func(s *Stats) { s.Requests.Get += uint64(sent); s.Retries += uint64(sent - 1); s.Failures.Timeout++ })
	step("close", func() {
		if err := c.Close(ctx, "s"); err != nil {
			t.Fatal(err)
		}
	}, func(s *Stats) { s.Requests.Delete++; s.KnownOpen-- })

	// Retrying off: a 503 fails at once as unavailable.
	noRetry, _, fi2, _ := legacy(t, Options{MaxRetryTime: -1})
	fi2.add(503)
	if _, err := noRetry.Info(ctx, "s"); err == nil {
		t.Fatal("503 accepted")
	}
	if st := noRetry.Stats(); st != (Stats{Requests: MethodCounts{Get: 1}, Failures: FailureCounts{Unavailable: 1}}) {
		t.Errorf("after one 503 without retrying: %+v", st)
	}

	// RelayStats reports the same numbers.
	st := c.Stats()
	want := map[string]float64{
		"requests_total/method=GET": float64(st.Requests.Get), "requests_total/method=POST": float64(st.Requests.Post),
		"requests_total/method=PUT": 1, "requests_total/method=DELETE": 1,
		"failures_total/reason=invalid": 2, "failures_total/reason=not_found": 1, "failures_total/reason=too_large": 1,
		"failures_total/reason=timeout": 1, "failures_total/reason=unavailable": 0, "failures_total/reason=status": 1,
		"retries_total": float64(st.Retries), "known_open_channels": 0,
	}
	var rs relay.StatsReporter = c
	got := map[string]float64{}
	for _, s := range rs.RelayStats() {
		key := s.Name
		for _, l := range s.Labels {
			key += "/" + l[0] + "=" + l[1]
		}
		if s.Help == "" || s.Gauge != (s.Name == "known_open_channels") {
			t.Errorf("%s: help %q, gauge %v", key, s.Help, s.Gauge)
		}
		got[key] = s.Value
	}
	if len(got) != len(want) {
		t.Errorf("RelayStats: %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("RelayStats %s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

func TestStatsKnownOpenExpires(t *testing.T) {
	c, _, _, _ := legacy(t, Options{ExistsTTL: time.Nanosecond})
	if _, err := c.Open(ctxTimeout(t, 5*time.Second), "e"); err != nil {
		t.Fatal(err)
	}
	if n := c.Stats().KnownOpen; n != 0 {
		t.Errorf("KnownOpen %d after the TTL passed, want 0", n)
	}
}
