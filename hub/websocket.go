package hub

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/coder/websocket"
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
	l.enc = webSocketEncoding(conn.Subprotocol())
	w := &wsConn{ctx: ctx, conn: conn}
	w.start(l, ctx.Done(), l.hub.opts.Heartbeat, w.ping)
	defer w.stop()
	return l.serve(w)
}

// webSocketEncoding returns the encoding for the subprotocol that the
// client chose, as it spelled it.
func webSocketEncoding(proto string) encoding {
	switch {
	case strings.EqualFold(proto, gapProtocol):
		return encWebSocketGap
	case strings.EqualFold(proto, metaProtocol):
		return encWebSocketMeta
	}
	return encWebSocket
}

// wsConn is the wire of a WebSocket listener.
type wsConn struct {
	waiter
	ctx  context.Context // ends with the connection
	conn *websocket.Conn
}

// write sends d as one frame within Options.WriteTimeout, binary or text as
// the encoding says. A write that times out closes the connection.
func (w *wsConn) write(d delivery) error {
	typ := websocket.MessageText
	if d.binary {
		typ = websocket.MessageBinary
	}
	ctx, cancel := w.l.bound(w.ctx)
	defer cancel()
	return w.conn.Write(ctx, typ, d.b)
}

func (w *wsConn) ping() (bool, error) { return false, w.l.ping(w.ctx, w.conn) }

// gone closes the connection with 1001 "410 Gone". The close handshake may
// fail: the client is told either way.
func (w *wsConn) gone() (bool, error) {
	return true, w.conn.Close(websocket.StatusGoingAway, "410 Gone")
}

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
