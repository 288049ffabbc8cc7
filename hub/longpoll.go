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
	t, expire := timer(l.hub.opts.LongPollTimeout)
	if t != nil {
		defer t.Stop()
	}
	// No deadline while waiting: over HTTP/2 an http.Server WriteTimeout
	// would reset the stream in the middle of the wait.
	l.undeadline()
	m, gap, err := l.await(ctx.Done(), expire)
	switch {
	case err == errGone:
		l.deadline()
		reply(l.w, http.StatusGone, "")
		l.hub.stats.gone.Add(1)
		return nil
	case m == nil && ctx.Err() != nil:
		return nil
	case m == nil:
		l.deadline()
		reply(l.w, http.StatusRequestTimeout, "")
		l.hub.stats.expired.Add(1)
		return nil
	}
	h := l.w.Header()
	if m.contentType != "" {
		h.Set("Content-Type", m.contentType)
	} else {
		h["Content-Type"] = nil // no sniffed type: Nchan sends none
	}
	h.Set("Content-Length", m.length)
	h.Set("Last-Modified", m.modified)
	h.Set("Etag", m.etag)
	if gap {
		h.Set("X-Gap", l.pos.String())
	}
	l.deadline()
	l.w.WriteHeader(http.StatusOK)
	l.wrote = true
	if _, err = l.w.Write(m.body); err != nil {
		return err
	}
	// Counted before the flush, so that no client sees a message that the
	// stats do not count yet; a flush that fails then ends the listener as
	// a failed write.
	l.delivered(gap)
	// Written within the deadline: over HTTP/2 the stream ends when the
	// handler returns, not before the last byte is on its way.
	if err = l.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	l.undeadline()
	return nil
}
