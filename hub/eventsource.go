package hub

import (
	"context"
	"net/http"
)

var (
	hello     = []byte(": hi\n\n")
	heartbeat = []byte(": \n\n")
	gone      = []byte(":410: 410 Gone\n\n")
)

// eventSource streams every message after l.pos as an EventSource event, a
// comment after each Options.Heartbeat of silence, and ":410: 410 Gone" when
// the channel ends. It returns when the channel or the request ends, or when
// a write fails.
func (l *listener) eventSource(ctx context.Context) error {
	l.w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	l.deadline()
	l.w.WriteHeader(http.StatusOK)
	if err := l.send(hello); err != nil {
		return err
	}
	d := l.hub.opts.Heartbeat
	t, beat := timer(d)
	if t != nil {
		defer t.Stop()
	}
	for {
		m, err := l.await(ctx, beat)
		switch {
		case err == errGone:
			return l.send(gone)
		case m != nil:
			err = l.send(m.frame)
			l.pos = m.pos
		case ctx.Err() != nil:
			return nil
		default:
			err = l.send(heartbeat)
		}
		if err != nil {
			return err
		}
		if t != nil {
			t.Reset(d)
		}
	}
}

// send writes b and flushes it within Options.WriteTimeout.
func (l *listener) send(b []byte) error {
	l.deadline()
	if _, err := l.w.Write(b); err != nil {
		return err
	}
	return l.rc.Flush()
}
