package hub

import (
	"context"
	"net/http"
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
	if err := l.send(hello); err != nil {
		return err
	}
	w := new(flushedStream)
	w.start(l, ctx.Done(), l.hub.opts.Heartbeat, w.heartbeat)
	defer w.stop()
	return l.serve(w)
}

// flushedStream is the wire of an EventSource stream on the
// ResponseWriter: each write is flushed.
type flushedStream struct{ waiter }

func (w *flushedStream) write(d delivery) error { return w.l.send(d.b) }

func (w *flushedStream) heartbeat() (bool, error) { return false, w.l.send(heartbeat) }

func (w *flushedStream) gone() (bool, error) {
	err := w.l.send(gone)
	return err == nil, err
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
