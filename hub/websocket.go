package hub

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/relay"
)

const (
	// metaProtocol is Nchan's WebSocket subprotocol: each frame carries
	// the message's ID and Content-Type before its body, in exactly the
	// shape Nchan sends, which Nchan's own client parses strictly.
	metaProtocol = "ws+meta.nchan"

	// gapProtocol is metaProtocol's frames with the hub's "gap:" line
	// when messages were dropped before the frame's message: a client
	// that offers it (the kit's client.js) asks for the gap signal. Its
	// name does not start with metaProtocol's, since Nchan takes any
	// offer that starts so for its own.
	gapProtocol = "ws+meta.sessionpush"

	// binaryType is the message Content-Type sent as binary frames; every
	// other message is a text frame, as on Nchan.
	binaryType = "application/octet-stream"
)

// webSocket upgrades the request, then sends every message after l.pos as
// one frame, pings after each Options.Heartbeat of silence, and closes the
// connection with status 1001 and reason "410 Gone" when the channel ends.
// It returns when the channel or the connection ends, or when a write or a
// ping fails, and only once the connection and its reading goroutine are
// done.
func (l *listener) webSocket(r *http.Request) error {
	hs := &handshake{ResponseWriter: l.w}
	l.deadline() // bounds the 101; hijacking then clears the connection's deadlines
	conn, err := websocket.Accept(hs, r, &websocket.AcceptOptions{
		Subprotocols:   []string{gapProtocol, metaProtocol}, // the first the client offered, in this order
		OriginPatterns: l.hub.opts.OriginPatterns,
	})
	if err != nil {
		if hs.refused == http.StatusNotImplemented {
			return fmt.Errorf("%w: %w", http.ErrNotSupported, err) // no Hijacker
		}
		if hs.refused != 0 {
			l.hub.stats.refusedAdd(hs.refused)
		}
		return err
	}
	l.wrote = true
	// CloseNow waits for the goroutine that CloseRead starts, so that
	// Shutdown's wait for ServeListener covers it. After Close it only
	// waits.
	defer conn.CloseNow()

	// The reading goroutine answers pings, takes the pongs and the
	// client's close; ctx ends with the connection. A data message from
	// the client closes it with 1008, as nothing is expected.
	ctx := conn.CloseRead(r.Context())
	proto := conn.Subprotocol() // as the client spelled it
	meta := strings.EqualFold(proto, metaProtocol) || strings.EqualFold(proto, gapProtocol)
	gapLines := strings.EqualFold(proto, gapProtocol)

	d := l.hub.opts.Heartbeat
	t, beat := timer(d)
	if t != nil {
		defer t.Stop()
	}
	for {
		m, gap, err := l.await(ctx.Done(), beat)
		switch {
		case err == errGone:
			l.hub.stats.gone.Add(1) // the close handshake may fail: the client is told either way
			return conn.Close(websocket.StatusGoingAway, "410 Gone")
		case m != nil:
			gap = gap && gapLines // Nchan's frames and a plain WebSocket have no way to tell
			err = l.writeFrame(ctx, conn, m, meta, gap)
			if err == nil {
				l.delivered(gap)
			}
			l.pos = m.pos
		case ctx.Err() != nil:
			return nil // the client closed or went away
		default:
			err = l.ping(ctx, conn)
		}
		if err != nil {
			return err
		}
		if t != nil {
			t.Reset(d)
		}
	}
}

// writeFrame sends m as one frame within Options.WriteTimeout: binary when
// its Content-Type is application/octet-stream, else text; its body, or
// with ws+meta.nchan or ws+meta.sessionpush its meta frame (see
// appendMetaFrame, with the gap line only when gap is set), built for this
// write in a pooled buffer so that no message holds a second copy of its
// body. A write that times out closes the connection.
func (l *listener) writeFrame(ctx context.Context, conn *websocket.Conn, m *message, meta, gap bool) error {
	typ, b := websocket.MessageText, m.body
	if m.contentType == binaryType {
		typ = websocket.MessageBinary
	}
	if meta {
		buf := metaBufs.Get().(*[]byte)
		defer func() {
			if cap(*buf) <= maxPooledFrame {
				metaBufs.Put(buf)
			}
		}()
		var after *relay.MessageID
		if gap {
			after = &l.pos
		}
		b = appendMetaFrame((*buf)[:0], m, after)
		*buf = b
	}
	ctx, cancel := l.bound(ctx)
	defer cancel()
	return conn.Write(ctx, typ, b)
}

// metaBufs holds the buffers that ws+meta.nchan frames are built in; one
// that grew past maxPooledFrame is left to the garbage collector.
var metaBufs = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledFrame = 64 << 10

// ping sends a ping and waits for the pong within Options.WriteTimeout; the
// reading goroutine takes the pong.
func (l *listener) ping(ctx context.Context, conn *websocket.Conn) error {
	ctx, cancel := l.bound(ctx)
	defer cancel()
	return conn.Ping(ctx)
}

// bound returns ctx limited to Options.WriteTimeout, if there is a bound.
func (l *listener) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if d := l.hub.opts.WriteTimeout; d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return ctx, func() {}
}

// appendMetaFrame appends m as a ws+meta.nchan frame: "id: <id>\n", then
// "content-type: <type>\n" if m has one, then, when gap is not nil (only for
// ws+meta.sessionpush), the hub's "gap: <gap>\n" line, a blank line and the
// body. CR and LF in the
// Content-Type become spaces, as net/http writes them in headers, so that
// it cannot add lines.
func appendMetaFrame(dst []byte, m *message, gap *relay.MessageID) []byte {
	dst = append(append(dst, "id: "...), m.id...)
	if m.contentType != "" {
		dst = append(dst, "\ncontent-type: "...)
		at := len(dst)
		dst = append(dst, m.contentType...)
		for i := at; i < len(dst); i++ {
			if dst[i] == '\r' || dst[i] == '\n' {
				dst[i] = ' '
			}
		}
	}
	if gap != nil {
		dst = append(append(dst, "\ngap: "...), gap.String()...)
	}
	return append(append(dst, "\n\n"...), m.body...)
}

// isWebSocket reports whether r asks to upgrade to WebSocket: Connection
// names upgrade and Upgrade names websocket, in any case.
func isWebSocket(r *http.Request) bool {
	return hasToken(r.Header, "Connection", "upgrade") && hasToken(r.Header, "Upgrade", "websocket")
}

// hasToken reports whether the comma-separated header key lists token.
func hasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// handshake is the ResponseWriter that websocket.Accept answers on. Its
// refusals (403 for a foreign Origin, 400 for a malformed handshake) are
// answered as the hub answers its own: an empty body, or a short plain-text
// reason for 400, rather than the library's error text, which is not for
// browsers. The upgrade itself goes through: Accept hijacks the
// connection through Unwrap.
type handshake struct {
	http.ResponseWriter
	refused int // the status of a refusal; zero if none
}

func (w *handshake) WriteHeader(code int) {
	if code == http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.refused = code
	h := w.Header()
	h.Del("Content-Type") // set by http.Error
	h.Del("X-Content-Type-Options")
	reason := ""
	if code == http.StatusBadRequest {
		reason = "invalid WebSocket handshake"
	}
	reply(w.ResponseWriter, code, reason)
}

func (w *handshake) Write(b []byte) (int, error) {
	if w.refused != 0 {
		return len(b), nil // Accept's error text
	}
	return w.ResponseWriter.Write(b)
}

func (w *handshake) Unwrap() http.ResponseWriter { return w.ResponseWriter }
