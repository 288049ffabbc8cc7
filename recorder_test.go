package sessionpush_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// callRecorder is the recording relay of sessionpushtest with a log of
// every call made to it, ServeListener included (which it answers 200
// "served" without holding the request), so that tests can tell whether a
// request reached the relay at all.
type callRecorder struct {
	*sessionpushtest.Relay
	mu    sync.Mutex
	calls []relayCall
}

// relayCall is one call to a callRecorder.
type relayCall struct {
	Op      string // Open, Publish, Info, Close, ServeListener
	Channel string
}

var (
	_ relay.Relay          = (*callRecorder)(nil)
	_ relay.ListenerServer = (*callRecorder)(nil)
)

func newCallRecorder() *callRecorder {
	return &callRecorder{Relay: sessionpushtest.NewRelay()}
}

func (c *callRecorder) log(op, channel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, relayCall{op, channel})
}

// Calls returns the calls so far, oldest first.
func (c *callRecorder) Calls() []relayCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

// Reset forgets the calls so far.
func (c *callRecorder) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = nil
}

func (c *callRecorder) Open(ctx context.Context, ch string) (string, error) {
	c.log("Open", ch)
	return c.Relay.Open(ctx, ch)
}

func (c *callRecorder) Publish(ctx context.Context, ch string, m relay.Message) (relay.Receipt, error) {
	c.log("Publish", ch)
	return c.Relay.Publish(ctx, ch, m)
}

func (c *callRecorder) Info(ctx context.Context, ch string) (relay.Info, error) {
	c.log("Info", ch)
	return c.Relay.Info(ctx, ch)
}

func (c *callRecorder) Close(ctx context.Context, ch string) error {
	c.log("Close", ch)
	return c.Relay.Close(ctx, ch)
}

func (c *callRecorder) ServeListener(w http.ResponseWriter, r *http.Request, ch string) {
	c.log("ServeListener", ch)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "served\n")
}
