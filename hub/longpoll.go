package hub

import (
	"context"
	"errors"
	"net/http"
)

// longPoll answers with the next message after l.pos, waiting for it up to
// Options.LongPollTimeout (then 408). A channel that ends first is answered
// 410; a request that ends first gets nothing.
func (l *listener) longPoll(ctx context.Context) error {
	// No deadline while waiting: over HTTP/2 an http.Server WriteTimeout
	// would reset the stream in the middle of the wait.
	l.undeadline()
	w := &pollAnswer{}
	w.once = true
	w.start(l, ctx.Done(), l.hub.opts.LongPollTimeout, w.expire)
	defer w.stop()
	if err := l.serve(w); err != nil || !l.wrote {
		return err
	}
	// The message was counted before this flush, so that no client sees a
	// message that the stats do not count yet; a flush that fails then ends
	// the listener as a failed write. Written within the deadline: over
	// HTTP/2 the stream ends when the handler returns, not before the last
	// byte is on its way.
	if err := l.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	l.undeadline()
	return nil
}

// pollAnswer is the wire of a long-poll: one answer, whose headers the
// encoding has set.
type pollAnswer struct{ waiter }

// write starts the 200 answer with the message's body; longPoll flushes it
// once it is counted.
func (w *pollAnswer) write(d delivery) error {
	l := w.l
	l.deadline()
	l.w.WriteHeader(http.StatusOK)
	l.wrote = true
	_, err := l.w.Write(d.b)
	return err
}

// expire answers 408 when no message came within Options.LongPollTimeout.
func (w *pollAnswer) expire() (bool, error) {
	w.l.deadline()
	reply(w.l.w, http.StatusRequestTimeout, "")
	w.l.hub.stats.expired.Add(1)
	return true, nil
}

func (w *pollAnswer) gone() (bool, error) {
	w.l.deadline()
	reply(w.l.w, http.StatusGone, "")
	return true, nil
}
