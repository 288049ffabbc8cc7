package hub

import (
	"crypto/tls"
	"net"
	"time"
)

// connWriter writes a hijacked stream to its connection: first at once,
// without a deadline, as much as the socket buffer takes (where the
// platform allows it: see tryWrite), then, for what is left, waiting
// within Options.WriteTimeout, a deadline cleared once the write is done.
// A listener that keeps up so costs no deadline update per message.
//
// A TLS connection has no such first attempt: a TLS write cannot be tried
// without waiting, nor taken up again after a deadline stopped it. So a
// write to it waits, and tryAll leaves it to the stream's own goroutine;
// except, where the platform tells how much the socket has yet to send
// (Linux: ioctl TIOCOUTQ), a small write to a socket whose send queue is
// empty: that write cannot wait, and tryAll makes it itself, saving the
// dispatch a goroutine per stream and message.
type connWriter struct {
	conn    net.Conn
	timeout time.Duration
	fast    fastWriter  // nil: every write waits within the timeout
	drained func() bool // TLS: whether the socket has sent all it was given; nil where unknown
}

// drainedMax is the largest write that tryAll makes itself to a TLS
// connection whose socket has sent all it was given: one TLS record, far
// below the smallest socket send buffer (SO_SNDBUF is at least 4,608 bytes
// on Linux), so the socket takes it at once.
const drainedMax = 2 << 10

func newConnWriter(conn net.Conn, timeout time.Duration) *connWriter {
	w := &connWriter{conn: conn, timeout: timeout, fast: newFastWriter(conn)}
	if w.fast == nil {
		w.drained = newDrained(conn)
	}
	return w
}

// write writes b, all of it or an error; a timeout error when the client
// did not take it within the timeout. The deadline set for it is cleared
// after it, so that it bounds this write only.
func (w *connWriter) write(b []byte) error {
	if w.fast != nil {
		n, err := w.fast.tryWrite(b)
		if err != nil {
			return err
		}
		if b = b[n:]; len(b) == 0 {
			return nil
		}
	}
	var t time.Time
	if w.timeout > 0 {
		t = time.Now().Add(w.timeout)
	}
	if err := w.conn.SetWriteDeadline(t); err != nil {
		return err
	}
	if _, err := w.conn.Write(b); err != nil {
		return err
	}
	if !t.IsZero() {
		return w.conn.SetWriteDeadline(time.Time{})
	}
	return nil
}

// tryAll writes as much of b as the socket takes at once, and returns the
// rest (nil when it took everything). Where the connection cannot be
// written without waiting (TLS, or a platform without non-blocking
// writes), it writes nothing and returns b: the caller hands it to a
// goroutine that may wait; but b of at most drainedMax bytes to a TLS
// connection whose socket has nothing left to send, it writes all.
func (w *connWriter) tryAll(b []byte) (rest []byte, err error) {
	if w.fast == nil {
		if w.drained != nil && len(b) <= drainedMax && w.drained() {
			if _, err := w.conn.Write(b); err != nil {
				return nil, err
			}
			return nil, nil
		}
		return b, nil
	}
	n, err := w.fast.tryWrite(b)
	if err != nil || n == len(b) {
		return nil, err
	}
	return b[n:], nil
}

// rawConn returns the connection under a TLS connection, or conn.
func rawConn(conn net.Conn) net.Conn {
	if tc, ok := conn.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return conn
}

// fastWriter writes without waiting.
type fastWriter interface {
	// tryWrite writes as much of b as the socket takes at once, and
	// returns how much; an error only when the connection failed.
	tryWrite(b []byte) (int, error)
}
