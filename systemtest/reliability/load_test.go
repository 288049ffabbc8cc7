package reliability

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// memSample is the hub process's memory at one moment.
type memSample struct {
	rss, heap uint64 // resident set; heap in use
}

func sampleMem() memSample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSample{heap: ms.HeapInuse}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			s.rss = pages * uint64(os.Getpagesize())
		}
	}
	return s
}

// flat reports whether the last third of samples stays within bound of the
// first third (the warm-up): its maximum at most 1.5 times the warm-up's
// maximum plus slack.
func flat(samples []uint64, slack uint64) (warm, late uint64, ok bool) {
	third := max(len(samples)/3, 1)
	warm = slices.Max(samples[:third])
	late = slices.Max(samples[len(samples)-third:])
	return warm, late, late <= warm+warm/2+slack
}

// TestLoad: many EventSource listeners (10 per channel, in a farm process)
// of an embedded relay under sustained pushes (one message to every channel
// per round) receive every message exactly once with no connection error,
// the relay's memory stays flat after the warm-up, and the delivery
// latency (send time in the body) is logged.
func TestLoad(t *testing.T) {
	listeners := pick(300, 10000)
	duration := pick(3*time.Second, 60*time.Second)
	round := pick(100*time.Millisecond, 500*time.Millisecond)
	sampleEvery := pick(100*time.Millisecond, time.Second)
	const perChannel = 10
	channels := listeners / perChannel

	tg, h := hubTarget(t, hub.Options{MaxListeners: perChannel, Logger: slog.New(slog.DiscardHandler)})
	addr := strings.TrimPrefix(tg.base, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), duration+5*time.Minute)
	defer cancel()
	names := make([]string, channels)
	var ls []farm.Listener
	for i := range names {
		names[i] = fmt.Sprintf("load-%d", i)
		cur, err := h.Open(ctx, names[i])
		if err != nil {
			t.Fatal(err)
		}
		for range perChannel {
			ls = append(ls, farm.Listener{Addr: addr, Path: "/sub/" + names[i], LastEventID: cur})
		}
	}
	connectStart := time.Now()
	f := farm.Start(t, farm.Options{Listeners: ls})
	connectTook := time.Since(connectStart)
	if n := h.Stats().Listeners.EventSource; n != int64(listeners) {
		t.Fatalf("%d EventSource listeners on the hub, want %d", n, listeners)
	}

	var rss, heap []uint64
	var keys []string
	tick, sample := time.NewTicker(round), time.NewTicker(sampleEvery)
	defer tick.Stop()
	defer sample.Stop()
	end := time.After(duration)
	start := time.Now()
	// The first round goes at once, then one per tick, until the end.
	for r := 0; ; r++ {
		key := "r" + strconv.Itoa(r)
		keys = append(keys, key)
		for _, ch := range names {
			if _, err := h.Publish(ctx, ch, relay.Message{Body: farm.Body(key, time.Now(), 0), ContentType: "application/json"}); err != nil {
				t.Fatalf("publish round %d to %s: %v", r, ch, err)
			}
		}
		wait := true
		for wait {
			select {
			case <-sample.C:
				m := sampleMem()
				rss, heap = append(rss, m.rss), append(heap, m.heap)
			case <-tick.C:
				wait = false
			case <-end:
				wait = false
				tick.Stop()
			}
		}
		if time.Since(start) >= duration {
			break
		}
	}
	elapsed := time.Since(start)

	var p99s []time.Duration
	var worst time.Duration
	var delivered int
	for _, k := range keys {
		st, err := f.Wait(k, listeners, time.Minute)
		if err != nil {
			t.Fatalf("round %s: %d of %d deliveries: %v", k, st.Count, listeners, err)
		}
		delivered += st.Count
		p99s = append(p99s, st.P99)
		worst = max(worst, st.Max)
	}
	verdict, err := f.Check(keys, 300*time.Millisecond)
	if err != nil || verdict != "" {
		t.Errorf("farm check: %q, %v; want every listener to get each round once", verdict, err)
	}
	c, err := f.Counters()
	if err != nil || c.Errors != 0 || c.Disconnects != 0 || c.Connected != listeners {
		t.Errorf("farm counters %+v, %v; want no error, no disconnect, %d connected", c, err, listeners)
	}
	st := h.Stats()
	if st.WriteFailures != 0 || st.SlowDisconnects != 0 || st.Gaps != 0 {
		t.Errorf("hub stats: %d write failures, %d slow disconnects, %d gaps; want none", st.WriteFailures, st.SlowDisconnects, st.Gaps)
	}
	if len(rss) < 3 {
		t.Fatalf("%d memory samples", len(rss))
	}
	rssWarm, rssLate, rssOK := flat(rss, 32<<20)
	heapWarm, heapLate, heapOK := flat(heap, 16<<20)
	if !rssOK || !heapOK {
		t.Errorf("memory not flat: RSS warm-up max %d MiB, last third max %d MiB; heap %d MiB then %d MiB",
			rssWarm>>20, rssLate>>20, heapWarm>>20, heapLate>>20)
	}
	slices.Sort(p99s)
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) }
	t.Logf("RESULT test=load listeners=%d channels=%d seconds=%.1f rounds=%d deliveries=%d deliveries_per_s=%.0f connect_s=%.2f p99_ms_median=%s p99_ms_max=%s latency_ms_max=%s rss_warm_mib=%.1f rss_late_mib=%.1f heap_warm_mib=%.1f heap_late_mib=%.1f farm_errors=%d disconnects=%d race=%v",
		listeners, channels, elapsed.Seconds(), len(keys), delivered, float64(delivered)/elapsed.Seconds(), connectTook.Seconds(),
		ms(p99s[len(p99s)/2]), ms(p99s[len(p99s)-1]), ms(worst),
		float64(rssWarm)/(1<<20), float64(rssLate)/(1<<20), float64(heapWarm)/(1<<20), float64(heapLate)/(1<<20),
		c.Errors, c.Disconnects, raceEnabled)
}
