package hub

import (
	"context"
	"net/http"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

var (
	hello     = []byte(": hi\n\n")
	heartbeat = []byte(": \n\n")
	gone      = []byte(":410: 410 Gone\n\n")
)

const eventStreamType = "text/event-stream; charset=utf-8"

// eventSource streams every message after l.pos as an EventSource event, a
// comment after each Options.Heartbeat of silence, and ":410: 410 Gone" when
// the channel ends, on the ResponseWriter. It returns when the channel or
// the request ends, or when a write fails.
func (l *listener) eventSource(ctx context.Context) error {
	l.w.Header().Set("Content-Type", eventStreamType)
	l.w.WriteHeader(http.StatusOK) // sent with hello, under its deadline
	l.wrote = true
	return l.events(ctx.Done(), l.send)
}

// events is the EventSource stream after its headers, written with send.
// The heartbeat timer is not reset at each write: when it fires after a
// write, it is set for the rest of the silence, so that a delivery costs no
// timer update.
func (l *listener) events(done <-chan struct{}, send func([]byte) error) error {
	if err := send(hello); err != nil {
		return err
	}
	d := l.hub.opts.Heartbeat
	t, beat := timer(d)
	if t != nil {
		defer t.Stop()
	}
	wrote := time.Now() // the last write
	for {
		m, gap, err := l.await(done, beat)
		switch {
		case err == errGone:
			if err := send(gone); err != nil {
				return err
			}
			l.hub.stats.gone.Add(1)
			return nil
		case m != nil:
			b := m.frame
			if gap {
				b = append(gapEventFrame(l.pos), m.frame...)
			}
			err = send(b)
			l.pos = m.pos
			if err == nil {
				l.delivered(gap)
				if t != nil {
					wrote = time.Now()
				}
			}
		default:
			select {
			case <-done:
				return nil
			default:
			}
			if silence := time.Since(wrote); silence < d {
				t.Reset(d - silence)
				continue
			}
			err = send(heartbeat)
			wrote = time.Now()
			t.Reset(d)
		}
		if err != nil {
			return err
		}
	}
}

// gapEventFrame returns the event that tells a listener at pos that messages
// after it were dropped: named "gap", pos as data, no id. Room is left for
// the frame that follows.
func gapEventFrame(pos relay.MessageID) []byte {
	b := make([]byte, 0, 128)
	b = append(b, "event: "+gapEvent+"\ndata: "...)
	b = append(b, pos.String()...)
	return append(b, "\n\n"...)
}

// send writes b and flushes it within Options.WriteTimeout; the deadline
// is cleared once it is written, so that it bounds this write only.
func (l *listener) send(b []byte) error {
	l.deadline()
	if _, err := l.w.Write(b); err != nil {
		return err
	}
	if err := l.rc.Flush(); err != nil {
		return err
	}
	l.undeadline()
	return nil
}

// hijack takes the listener's connection over and serves the stream as an
// hstream, answering 200 itself. It reports
// false, nil when the ResponseWriter cannot hijack: the caller then serves
// the stream on it.
func (l *listener) hijack() (bool, error) {
	if !canHijack(l.w) {
		return false, nil
	}
	// The status goes through the ResponseWriter, so that the wrappers
	// around it (the root middleware's, which may add Set-Cookie; an
	// access log's) see it. With "Transfer-Encoding: identity", net/http
	// writes the header without chunked encoding and closes the connection
	// after the answer, as it does for EventSource; Hijack flushes it.
	hdr := l.w.Header()
	hdr.Set("Content-Type", eventStreamType)
	hdr.Set("Connection", "close") // the stream ends with the connection
	hdr.Del("Content-Length")
	hdr.Set("Transfer-Encoding", "identity")
	l.w.WriteHeader(http.StatusOK)
	conn, brw, err := l.rc.Hijack()
	if err != nil {
		return false, err // the answer has begun: nothing else can be sent
	}
	// Bytes the client sent after its request, if any, are of no use: a
	// listener is not expected to send anything.
	_ = brw
	l.w, l.rc = nil, nil // let net/http's response and buffers go
	l.wrote = true
	// The stream owns the listener's place in its channel and in
	// Hub.serving from now on.
	startStream(l, conn)
	return true, nil
}

// canHijack reports whether w, or a ResponseWriter it wraps (Unwrap), can
// hijack its connection, as http.ResponseController would find out.
func canHijack(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}
