package hub

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/relay"
)

// bufferedSize is what one text message of n bytes counts in the budget.
func bufferedSize(n int) int64 { return newMessage(text(strings.Repeat("x", n))).size }

// heldBytes adds up the sizes of the messages in every channel's buffer:
// what the budget must count.
func heldBytes(h *Hub) (total int64, msgs int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, c := range h.channels {
		c.mu.RLock()
		for _, m := range c.msgs {
			total += m.size
			msgs++
		}
		c.mu.RUnlock()
	}
	return total, msgs
}

// TestBudgetEvictsOldest fills a budget of three messages from two channels:
// each message beyond it drops the oldest of all, whatever its channel.
func TestBudgetEvictsOldest(t *testing.T) {
	size := bufferedSize(1000)
	h := New(Options{MaxBufferedBytes: 3 * size})
	defer h.Shutdown(context.Background())
	a, b := uuid.NewString(), uuid.NewString()
	mustOpen(t, h, a)
	mustOpen(t, h, b)
	body := strings.Repeat("x", 1000)

	mustPublish(t, h, a, text(body)) // a1
	mustPublish(t, h, b, text(body)) // b1
	mustPublish(t, h, a, text(body)) // a2
	if s := h.Stats(); s.BufferedBytes != 3*size || s.Evictions != 0 {
		t.Fatalf("at the budget: %d bytes, %d evictions; want %d, 0", s.BufferedBytes, s.Evictions, 3*size)
	}
	mustPublish(t, h, b, text(body)) // b2: a1 goes
	if na, nb := mustInfo(t, h, a).Messages, mustInfo(t, h, b).Messages; na != 1 || nb != 2 {
		t.Errorf("buffered a %d, b %d; want 1, 2 (the oldest, a1, evicted)", na, nb)
	}
	mustPublish(t, h, a, text(body)) // a3: b1 goes
	if na, nb := mustInfo(t, h, a).Messages, mustInfo(t, h, b).Messages; na != 2 || nb != 1 {
		t.Errorf("buffered a %d, b %d; want 2, 1 (b1 evicted)", na, nb)
	}
	s := h.Stats()
	if s.BufferedBytes != 3*size || s.Evictions != 2 {
		t.Errorf("%d bytes, %d evictions; want %d, 2", s.BufferedBytes, s.Evictions, 3*size)
	}
	if held, _ := heldBytes(h); held != s.BufferedBytes {
		t.Errorf("buffers hold %d bytes, the budget counts %d", held, s.BufferedBytes)
	}
}

// TestBudgetGap checks that a listener who had not had an evicted message
// is told of the gap, on each transport that can tell, and then gets what
// is still buffered.
func TestBudgetGap(t *testing.T) {
	size := bufferedSize(2)
	h, srv := newTestHub(t, Options{MaxBufferedBytes: 2 * size, Heartbeat: -1})
	mustOpen(t, h, ch)
	ids := publishN(t, h, 4) // m0 and m1 evicted; m2, m3 stay
	if info := mustInfo(t, h, ch); info.Messages != 2 {
		t.Fatalf("%d messages buffered, want 2", info.Messages)
	}
	url := srv.URL + "/sub/" + ch

	t.Run("eventsource", func(t *testing.T) {
		s := openStream(t, url, http.Header{"Last-Event-Id": {ids[0]}})
		if ev := s.next(t); ev.name != "gap" || ev.data != ids[0] {
			t.Errorf("got %+v, want a gap event after %s", ev, ids[0])
		}
		for _, i := range []int{2, 3} {
			if ev := s.next(t); ev.id != ids[i] {
				t.Errorf("got %+v, want %s", ev, ids[i])
			}
		}
	})
	t.Run("longpoll", func(t *testing.T) {
		a := get(http.DefaultClient, "GET", url, http.Header{"Last-Event-Id": {ids[0]}})
		if a.code != 200 || a.body != "m2" || a.header.Get("X-Gap") != ids[0] {
			t.Errorf("got %d %q X-Gap %q, want m2 with X-Gap %s", a.code, a.body, a.header.Get("X-Gap"), ids[0])
		}
	})
	t.Run("no gap from the buffer's start", func(t *testing.T) {
		a := get(http.DefaultClient, "GET", url, http.Header{"Last-Event-Id": {ids[1]}})
		if a.code != 200 || a.body != "m2" || a.header.Get("X-Gap") != "" {
			t.Errorf("got %d %q X-Gap %q, want m2 without a gap", a.code, a.body, a.header.Get("X-Gap"))
		}
	})
}

// TestBudgetReleased checks that every way a message leaves a buffer gives
// its bytes back: the buffer length, expiry, Close and Shutdown.
func TestBudgetReleased(t *testing.T) {
	size := bufferedSize(10)
	body := text(strings.Repeat("x", 10))
	h := New(Options{BufferLength: 2, MessageTTL: time.Hour})
	a, b := uuid.NewString(), uuid.NewString()
	mustOpen(t, h, a)
	mustOpen(t, h, b)
	for range 5 {
		mustPublish(t, h, a, body)
	}
	mustPublish(t, h, b, body)
	if got := h.Stats().BufferedBytes; got != 3*size {
		t.Errorf("after the buffer length: %d bytes, want %d", got, 3*size)
	}
	if err := h.Close(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if got := h.Stats().BufferedBytes; got != size {
		t.Errorf("after Close: %d bytes, want %d", got, size)
	}
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := h.Stats(); s.BufferedBytes != 0 || s.Evictions != 0 {
		t.Errorf("after Shutdown: %d bytes, %d evictions; want 0, 0", s.BufferedBytes, s.Evictions)
	}

	t.Run("expiry", func(t *testing.T) {
		h := New(Options{MessageTTL: time.Millisecond})
		defer h.Shutdown(context.Background())
		mustOpen(t, h, a)
		mustPublish(t, h, a, body)
		time.Sleep(2 * time.Millisecond) // let the message expire: the condition under test
		if info := mustInfo(t, h, a); info.Messages != 0 {
			t.Fatalf("%d messages after expiry", info.Messages)
		}
		if got := h.Stats().BufferedBytes; got != 0 {
			t.Errorf("after expiry: %d bytes, want 0", got)
		}
	})
	t.Run("no cap", func(t *testing.T) {
		h := New(Options{MaxBufferedBytes: -1, BufferLength: 1000})
		defer h.Shutdown(context.Background())
		mustOpen(t, h, a)
		for range 100 {
			mustPublish(t, h, a, body)
		}
		if s := h.Stats(); s.BufferedBytes != 100*size || s.Evictions != 0 {
			t.Errorf("%d bytes, %d evictions; want %d, 0", s.BufferedBytes, s.Evictions, 100*size)
		}
	})
}

// TestBudgetConcurrent publishes from many goroutines to many channels,
// with closes among them, under a small budget: the count always matches
// what the buffers hold, and stays within the budget once publishers stop.
func TestBudgetConcurrent(t *testing.T) {
	size := bufferedSize(100)
	h := New(Options{MaxBufferedBytes: 20 * size})
	defer h.Shutdown(context.Background())
	channels := make([]string, 16)
	for i := range channels {
		channels[i] = uuid.NewString()
		mustOpen(t, h, channels[i])
	}
	body := text(strings.Repeat("x", 100))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				c := channels[(g*7+i)%len(channels)]
				if i%97 == 0 {
					h.Close(context.Background(), c)
					h.Open(context.Background(), c)
				}
				h.Publish(context.Background(), c, body) // a channel closed meanwhile refuses it
			}
		})
	}
	wg.Wait()
	held, msgs := heldBytes(h)
	s := h.Stats()
	if held != s.BufferedBytes || held != int64(msgs)*size {
		t.Errorf("buffers hold %d bytes in %d messages, the budget counts %d", held, msgs, s.BufferedBytes)
	}
	if s.BufferedBytes > 20*size || s.Evictions == 0 {
		t.Errorf("%d bytes buffered (budget %d), %d evictions", s.BufferedBytes, 20*size, s.Evictions)
	}
}

// TestBudgetBoundsHeap is the attack the budget is for: many channels each
// sent large messages up to their buffer length. What stays in the heap is
// the budget, not channels × buffer length × size.
func TestBudgetBoundsHeap(t *testing.T) {
	const budget = 4 << 20
	h := New(Options{MaxBufferedBytes: budget, MaxMessageSize: 64 << 10})
	defer h.Shutdown(context.Background())
	live := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := live()
	big := relay.Message{Body: []byte(strings.Repeat("x", 64<<10))}
	channels := make([]string, 200)
	for i := range channels {
		channels[i] = uuid.NewString()
		mustOpen(t, h, channels[i])
	}
	for range 10 { // 200 × 10 × 64 KiB = 125 MiB published
		for _, c := range channels {
			mustPublish(t, h, c, big)
		}
	}
	grew := int64(live()) - int64(base)
	s := h.Stats()
	t.Logf("published %d MiB; buffered %d KiB; heap grew %d KiB; %d evictions",
		200*10*64>>10, s.BufferedBytes>>10, grew>>10, s.Evictions)
	if s.BufferedBytes > budget {
		t.Errorf("buffered %d bytes, budget %d", s.BufferedBytes, budget)
	}
	if grew > budget+budget/4 {
		t.Errorf("the heap grew %d bytes, budget %d", grew, budget)
	}
}

// TestBudgetRSS measures the process's resident memory for the attack of
// TestBudgetBoundsHeap at scale, with the default budget of 64 MiB: 1,000
// channels, ten 64 KiB messages each (625 MiB published), in a child
// process each: with Go's default collector settings, and with a soft
// memory limit (GOMEMLIMIT) of the process's memory before the attack plus
// 1.5 × the budget. The budget bounds what buffered messages hold; between
// collections the heap also holds the garbage of evicted ones, up to as
// much again as the live heap with GOGC=100, which the memory limit trims.
// It is a measurement, run on demand:
//
//	HUB_BUDGET_RSS=1 go test ./hub -run TestBudgetRSS -v
func TestBudgetRSS(t *testing.T) {
	const budget = 64 << 20
	if os.Getenv("HUB_BUDGET_RSS_CHILD") != "" {
		budgetRSSChild(t, budget)
		return
	}
	if os.Getenv("HUB_BUDGET_RSS") == "" {
		t.Skip("a measurement: HUB_BUDGET_RSS=1 runs it")
	}
	for _, limit := range []bool{false, true} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBudgetRSS$", "-test.v")
		cmd.Env = append(os.Environ(), "HUB_BUDGET_RSS_CHILD=1", "GOMEMLIMIT=off")
		if limit {
			cmd.Env = append(cmd.Env, "HUB_BUDGET_RSS_LIMIT=1")
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("memory limit %v: %v\n%s", limit, err, out)
		}
		for line := range strings.SplitSeq(string(out), "\n") {
			if strings.Contains(line, "RESULT") {
				t.Log(strings.TrimSpace(line))
			}
		}
	}
}

// budgetRSSChild is TestBudgetRSS's child process: it fails if, under a
// memory limit, resident memory grows by more than twice the budget.
func budgetRSSChild(t *testing.T, budget int64) {
	h := New(Options{MaxMessageSize: 64 << 10})
	defer h.Shutdown(context.Background())
	channels := make([]string, 1000)
	for i := range channels {
		channels[i] = uuid.NewString()
		mustOpen(t, h, channels[i])
	}
	runtime.GC()
	before := rss(t)
	limited := os.Getenv("HUB_BUDGET_RSS_LIMIT") != ""
	setting := "default GC"
	if limited {
		debug.SetMemoryLimit(before + budget*3/2)
		setting = fmt.Sprintf("memory limit %d MiB", (before+budget*3/2)>>20)
	}
	big := relay.Message{Body: []byte(strings.Repeat("x", 64<<10))}
	peak := before
	for range 10 {
		for _, c := range channels {
			mustPublish(t, h, c, big)
		}
		peak = max(peak, rss(t))
	}
	s := h.Stats()
	t.Logf("RESULT budget %d MiB, %s: RSS %d MiB before, peak %d MiB: growth %.2f× the budget; buffered %d MiB, %d evictions",
		budget>>20, setting, before>>20, peak>>20, float64(peak-before)/float64(budget), s.BufferedBytes>>20, s.Evictions)
	if s.BufferedBytes > budget {
		t.Errorf("buffered %d bytes, budget %d", s.BufferedBytes, budget)
	}
	if limited && peak-before > 2*budget {
		t.Errorf("RSS grew %d MiB under a memory limit, more than twice the budget", (peak-before)>>20)
	}
}

// rss returns the process's resident set size.
func rss(t *testing.T) int64 {
	t.Helper()
	kb, err := servers.ProcStatus("self", "VmRSS")
	if err != nil {
		t.Skipf("no resident set size: %v", err)
	}
	return kb << 10
}
