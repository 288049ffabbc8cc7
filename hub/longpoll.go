package hub

import (
	"context"
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
	m, gap, err := l.await(ctx.Done(), expire)
	switch {
	case err == errGone:
		l.deadline()
		reply(l.w, http.StatusGone, "")
		return nil
	case m == nil && ctx.Err() != nil:
		return nil
	case m == nil:
		l.deadline()
		reply(l.w, http.StatusRequestTimeout, "")
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
	l.delivered(gap)
	return nil
}
