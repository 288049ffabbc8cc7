package reliability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// lossCase is one run of the loss test.
type lossCase struct {
	messages   int  // published, numbered 1..messages
	reconnects int  // disconnections forced at random moments
	buffer     int  // the relay's buffer length
	lag        bool // half the reconnections wait until more than buffer messages were published
	seed       uint64
}

// lossResult is what the listener saw.
type lossResult struct {
	received   int            // messages received
	reconnects int            // forced disconnections, each followed by a resume
	dropped    int            // disconnections that were not forced
	lagged     int            // reconnections after the buffer moved past the listener
	gaps       int            // gap signals
	gapMissed  int            // messages missed after a gap signal
	skips      int            // jumps over messages without a gap signal
	skipMissed int            // messages missed in them
	problems   []string       // duplicates, disorder, wrong gap positions, wrong IDs
	lastSeq    int            // the last message's number
	seenIDs    map[int]string // the ID each message came with
}

// kick tells the listener to drop its connection; with lag, to stay away
// until the buffer has moved past its position. The listener closes ack
// once the connection is down, so that its position is at most the message
// just published.
type kick struct {
	lag bool
	ack chan struct{}
}

// kickPoints returns the sorted message numbers after whose publication the
// listener is kicked: one at a random point in each of n equal slices of
// [1, last], and at least spacing apart.
func kickPoints(rng *rand.Rand, n, last, spacing int) []int {
	seg := last / n
	pts := make([]int, n)
	for i := range pts {
		pts[i] = i*seg + 1 + rng.IntN(max(seg-spacing, 1))
	}
	return pts
}

// runLoss publishes c.messages to a fresh channel of tg while one listener
// on tr follows it, and returns what the listener saw.
func runLoss(t *testing.T, tg *target, tr transport, c lossCase) lossResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pick(time.Minute, 10*time.Minute))
	defer cancel()
	rng := rand.New(rand.NewPCG(c.seed, 0))
	ch, cursor := newChannel(t, tg)
	hc := tg.newHTTPClient(t)

	spacing := 0
	if c.lag {
		spacing = c.buffer + 10 // so that the publisher can outrun a lagging listener before the next kick
	}
	last := c.messages
	if c.lag {
		last = c.messages - c.buffer - 10
	}
	points := kickPoints(rng, c.reconnects, last, spacing)
	lags := make(map[int]bool)
	for _, p := range points {
		lags[p] = c.lag && rng.IntN(2) == 0
	}
	// The publisher stays at most window messages (half the buffer) ahead
	// of the listener, so that the listener follows live rather than
	// replaying the buffer and falls out of the buffer only when it lags
	// on purpose: then it lets the publisher run more than a buffer ahead.
	window := min(50, c.buffer/2)

	published, allowed := newCounter(), newCounter()
	allowed.set(window)
	lagTarget := 0
	kicks := make(chan kick)
	var mu sync.Mutex
	ids := make(map[int]string)
	pubErr := make(chan error, 1)
	go func() {
		pubErr <- func() error {
			next := 0
			for seq := 1; seq <= c.messages; seq++ {
				if err := allowed.wait(ctx, seq); err != nil {
					return fmt.Errorf("publisher: %w", err)
				}
				rc, err := tg.relay.Publish(ctx, ch, relay.Message{Body: []byte(body(seq)), ContentType: "text/plain"})
				if err != nil {
					return fmt.Errorf("publish %d: %w", seq, err)
				}
				mu.Lock()
				ids[seq] = rc.ID
				mu.Unlock()
				published.set(seq)
				for next < len(points) && points[next] == seq {
					k := kick{lag: lags[seq], ack: make(chan struct{})}
					select {
					case kicks <- k:
					case <-ctx.Done():
						return fmt.Errorf("publisher: kick %d: %w", next, ctx.Err())
					}
					select {
					case <-k.ack:
					case <-ctx.Done():
						return fmt.Errorf("publisher: kick %d: %w", next, ctx.Err())
					}
					next++
				}
			}
			return nil
		}()
	}()

	res := lossResult{seenIDs: make(map[int]string)}
	pos := position{id: cursor}
	var prev event
	record := func(ev event) {
		seq, _, err := parseBody(ev.body)
		if err != nil {
			res.problems = append(res.problems, err.Error())
			return
		}
		res.received++
		res.seenIDs[seq] = ev.pos.id
		switch {
		case seq <= res.lastSeq:
			res.problems = append(res.problems, fmt.Sprintf("message %d after %d (duplicate or out of order)", seq, res.lastSeq))
			return
		case ev.gap != "" && ev.gap != prev.pos.id:
			res.problems = append(res.problems, fmt.Sprintf("gap signal names %q, the listener's last message is %q", ev.gap, prev.pos.id))
		case ev.gap != "" && seq == res.lastSeq+1:
			res.problems = append(res.problems, fmt.Sprintf("gap signal before %d, which follows %d", seq, res.lastSeq))
		}
		if ev.gap != "" {
			res.gaps++
			res.gapMissed += seq - res.lastSeq - 1
		} else if seq > res.lastSeq+1 {
			res.skips++
			res.skipMissed += seq - res.lastSeq - 1
		}
		res.lastSeq, prev, pos = seq, ev, ev.pos
		allowed.set(max(res.lastSeq+window, lagTarget))
	}

	for res.lastSeq < c.messages {
		if ctx.Err() != nil {
			t.Fatalf("%s: listener at %d of %d: %v (publisher: %v)", tr.name, res.lastSeq, c.messages, ctx.Err(), drain(pubErr))
		}
		connCtx, stop := context.WithCancel(ctx)
		kicked := make(chan kick, 1)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			select {
			case k := <-kicks:
				kicked <- k
				stop()
			case <-connCtx.Done():
			}
		}()
		s, err := tr.dial(connCtx, hc, tg.subURL(ch), pos)
		if err == nil {
			for res.lastSeq < c.messages {
				var ev event
				if ev, err = s.next(); err != nil {
					break
				}
				record(ev)
			}
			s.close()
		}
		stop()
		<-watched
		select {
		case k := <-kicked:
			close(k.ack)
			res.reconnects++
			// A listener that has no message yet resumes from the
			// channel's start, where there is no gap to signal: it
			// lags only once it has a position.
			if k.lag && res.lastSeq > 0 && res.lastSeq < c.messages {
				// It stays away until 1 to 9 messages beyond a
				// buffer's worth were published: they are gone.
				if target := res.lastSeq + c.buffer + 1 + rng.IntN(9); target <= c.messages {
					res.lagged++
					lagTarget = target
					allowed.set(target)
					if err := published.wait(ctx, target); err != nil {
						t.Fatalf("%s: lagging listener: %v (publisher: %v)", tr.name, err, drain(pubErr))
					}
					// Where several instances serve the channel, each applies
					// the messages a moment after Publish: one that has not
					// yet would still hold what the others dropped.
					if tg.settle != nil {
						mu.Lock()
						id := ids[target]
						mu.Unlock()
						if err := tg.settle(ctx, ch, id); err != nil {
							t.Fatalf("%s: lagging listener: %v", tr.name, err)
						}
					}
				}
			}
		default:
			if res.lastSeq < c.messages {
				res.dropped++
				t.Logf("%s: connection ended unasked at %d: %v", tr.name, res.lastSeq, err)
				if res.dropped > 20 {
					t.Fatalf("%s: %d connections ended unasked", tr.name, res.dropped)
				}
			}
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for seq, id := range res.seenIDs {
		if want := ids[seq]; want != "" && id != want {
			res.problems = append(res.problems, fmt.Sprintf("message %d came with id %q, published as %q", seq, id, want))
		}
	}
	return res
}

func drain(c chan error) error {
	select {
	case err := <-c:
		return err
	default:
		return nil
	}
}

func (r lossResult) log(t *testing.T, relayName, tr string, c lossCase) {
	t.Helper()
	t.Logf("RESULT test=loss relay=%s transport=%s buffer=%d messages=%d seed=%d received=%d reconnects=%d lagged=%d dropped=%d gaps=%d gap_missed=%d silent_skips=%d silent_missed=%d problems=%d",
		relayName, tr, c.buffer, c.messages, c.seed, r.received, r.reconnects, r.lagged, r.dropped, r.gaps, r.gapMissed, r.skips, r.skipMissed, len(r.problems))
	for i, p := range r.problems {
		if i == 10 {
			t.Errorf("... %d more problems", len(r.problems)-i)
			break
		}
		t.Error(p)
	}
}

// seed returns the PRNG seed: SESSIONPUSH_SEED if set, else the time.
func seed(t *testing.T) uint64 {
	var s uint64
	if _, err := fmt.Sscan(envOr("SESSIONPUSH_SEED", ""), &s); err != nil {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with SESSIONPUSH_SEED=%d)", s, s)
	return s
}

func fullBufferCase(t *testing.T) lossCase {
	n := pick(500, 5000)
	return lossCase{messages: n, reconnects: pick(10, 50), buffer: n + 100, seed: seed(t)}
}

func smallBufferCase(t *testing.T) lossCase {
	return lossCase{messages: pick(500, 5000), reconnects: pick(10, 50), buffer: 20, lag: true, seed: seed(t)}
}

// checkAll asserts that the listener got every message, each once, in order.
func checkAll(t *testing.T, r lossResult, c lossCase) {
	t.Helper()
	if r.received != c.messages || r.lastSeq != c.messages || r.gaps != 0 || r.skips != 0 {
		t.Errorf("received %d of %d messages (last %d), %d gap signals, %d skips; want all, none skipped",
			r.received, c.messages, r.lastSeq, r.gaps, r.skips)
	}
	if r.reconnects != c.reconnects || r.dropped != 0 {
		t.Errorf("reconnected %d times, want %d; %d connections ended unasked, want none", r.reconnects, c.reconnects, r.dropped)
	}
}

// TestLossHub: on the embedded relay, with a buffer that holds every
// message, a listener that reconnects at random moments gets all of them,
// each once, in order, on every transport; served over plain HTTP/1.1 and
// over TLS with HTTP/2 (WebSocket then upgrades over TLS with HTTP/1.1).
func TestLossHub(t *testing.T) {
	c := fullBufferCase(t)
	for _, p := range []struct {
		proto proto
		label string // of the RESULT lines
	}{{plain, "hub"}, {tlsHTTP2, "hub-http2"}} {
		tg, _ := hubTargetOver(t, hub.Options{BufferLength: c.buffer, MessageTTL: -1}, p.proto)
		for _, tr := range transports {
			t.Run(p.proto.name+"/"+tr.name, func(t *testing.T) {
				r := runLoss(t, tg, tr, c)
				r.log(t, p.label, tr.name, c)
				checkAll(t, r, c)
			})
		}
	}
}

// TestLossHubSmallBuffer: on the embedded relay with a small buffer, a
// listener that fell behind it is told of the gap (the position it fell
// behind at) before the first message after it, and then gets every
// message after it: a message is never skipped silently.
func TestLossHubSmallBuffer(t *testing.T) {
	c := smallBufferCase(t)
	tg, h := hubTarget(t, hub.Options{BufferLength: c.buffer, MessageTTL: -1})
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			before := h.Stats().Gaps
			r := runLoss(t, tg, tr, c)
			r.log(t, "hub", tr.name, c)
			// A signal written on a connection that the listener
			// dropped before reading it is counted and sent again.
			if sent := h.Stats().Gaps - before; sent < uint64(r.gaps) {
				t.Errorf("the hub counts %d gap signals sent, the listener got %d", sent, r.gaps)
			}
			if r.skips != 0 {
				t.Errorf("%d silent skips over %d messages; want a gap signal before each", r.skips, r.skipMissed)
			}
			if r.lastSeq != c.messages || r.received+r.gapMissed != c.messages {
				t.Errorf("received %d, missed %d after gap signals, last %d; want them to add up to %d",
					r.received, r.gapMissed, r.lastSeq, c.messages)
			}
			if r.gaps != r.lagged || r.lagged == 0 {
				t.Errorf("%d gap signals for %d reconnections after the buffer moved on; want one each", r.gaps, r.lagged)
			}
			if r.reconnects != c.reconnects || r.dropped != 0 {
				t.Errorf("reconnected %d times, want %d; %d connections ended unasked, want none", r.reconnects, c.reconnects, r.dropped)
			}
		})
	}
}

// TestLossRedisHub: the same as TestLossHub on redishub, with three
// instances on one Redis: the listener reconnects to another instance each
// time, and still gets every message, each once, in order.
func TestLossRedisHub(t *testing.T) {
	c := fullBufferCase(t)
	tg, _ := redishubTarget(t, hub.Options{BufferLength: c.buffer, MessageTTL: -1}, 3)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			r := runLoss(t, tg, tr, c)
			r.log(t, "redishub", tr.name, c)
			checkAll(t, r, c)
		})
	}
}

// TestLossRedisHubSmallBuffer: the same as TestLossHubSmallBuffer on
// redishub, each reconnection to another of three instances: behind the
// buffer kept in Redis, the listener is told of the gap.
func TestLossRedisHubSmallBuffer(t *testing.T) {
	c := smallBufferCase(t)
	tg, _ := redishubTarget(t, hub.Options{BufferLength: c.buffer, MessageTTL: -1}, 3)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			r := runLoss(t, tg, tr, c)
			r.log(t, "redishub", tr.name, c)
			if r.skips != 0 {
				t.Errorf("%d silent skips over %d messages; want a gap signal before each", r.skips, r.skipMissed)
			}
			if r.lastSeq != c.messages || r.received+r.gapMissed != c.messages {
				t.Errorf("received %d, missed %d after gap signals, last %d; want them to add up to %d",
					r.received, r.gapMissed, r.lastSeq, c.messages)
			}
			if r.gaps != r.lagged || r.lagged == 0 {
				t.Errorf("%d gap signals for %d reconnections after the buffer moved on; want one each", r.gaps, r.lagged)
			}
		})
	}
}

// TestLossNchan: the same as TestLossHub on Nchan behind nginx.
func TestLossNchan(t *testing.T) {
	c := fullBufferCase(t)
	tg, _ := nchanTargets(t, c.buffer, 20)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			r := runLoss(t, tg, tr, c)
			r.log(t, "nchan", tr.name, c)
			checkAll(t, r, c)
		})
	}
}

// TestLossNchanSmallBuffer measures what Nchan, which has no gap signal,
// does to a listener that fell behind a small buffer: it resumes at the
// oldest buffered message and skips the rest silently. The skips are
// logged; order and uniqueness are still checked.
func TestLossNchanSmallBuffer(t *testing.T) {
	c := smallBufferCase(t)
	_, tg := nchanTargets(t, 100, c.buffer)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			r := runLoss(t, tg, tr, c)
			r.log(t, "nchan", tr.name, c)
			if r.lastSeq != c.messages || r.received+r.skipMissed+r.gapMissed != c.messages {
				t.Errorf("received %d, skipped %d, last %d; want them to add up to %d", r.received, r.skipMissed, r.lastSeq, c.messages)
			}
			if r.skips < r.lagged || r.lagged == 0 {
				t.Errorf("%d skips for %d reconnections after the buffer moved on; want at least one each (Nchan has no gap signal)", r.skips, r.lagged)
			}
		})
	}
}
