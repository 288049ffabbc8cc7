package reliability

import (
	"context"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// TestGapAfterExpiry: a listener of the embedded relay that comes back
// after the messages it had not had expired (Options.MessageTTL) is told of
// the gap, with its last message's ID, before the next message, on every
// transport.
func TestGapAfterExpiry(t *testing.T) {
	const ttl = time.Second
	tg, h := hubTarget(t, hub.Options{BufferLength: 100, MessageTTL: ttl})
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			hc := newHTTPClient(t)
			ch, cursor := newChannel(t, tg)
			publish := func(seq int) {
				t.Helper()
				if _, err := h.Publish(ctx, ch, relay.Message{Body: []byte(body(seq)), ContentType: "text/plain"}); err != nil {
					t.Fatal(err)
				}
			}

			// The listener waits (a long-poll's request starts with its
			// first read), gets message 1 live, and goes away.
			s, err := tr.dial(ctx, hc, tg.subURL(ch), position{id: cursor})
			if err != nil {
				t.Fatal(err)
			}
			first := make(chan event, 1)
			go func() {
				ev, err := s.next()
				if err != nil {
					ev.body = err.Error()
				}
				first <- ev
			}()
			if !waitFor(10*time.Second, func() bool { return subscribers(h, ch) == 1 }) {
				t.Fatalf("%d listeners, want 1", subscribers(h, ch))
			}
			publish(1)
			ev1 := <-first
			s.close()
			if seq, _, err := parseBody(ev1.body); err != nil || seq != 1 || ev1.gap != "" {
				t.Fatalf("first message %q, gap %q; want 1 without gap", ev1.body, ev1.gap)
			}

			// Messages 2 and 3 are published and expire while it is away.
			publish(2)
			publish(3)
			expired := waitFor(10*time.Second, func() bool {
				info, err := h.Info(ctx, ch)
				return err == nil && info.Messages == 0
			})
			if !expired {
				t.Fatal("messages still buffered after their TTL")
			}
			publish(4)
			s, err = tr.dial(ctx, hc, tg.subURL(ch), ev1.pos)
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			ev, err := s.next()
			if err != nil {
				t.Fatal(err)
			}
			seq, _, _ := parseBody(ev.body)
			if seq != 4 || ev.gap != ev1.pos.id {
				t.Errorf("after expiry: message %d with gap %q; want 4 with gap %q", seq, ev.gap, ev1.pos.id)
			}
			t.Logf("RESULT test=expiry transport=%s gap=%v resumed_at=%d", tr.name, ev.gap == ev1.pos.id, seq)
		})
	}
}
