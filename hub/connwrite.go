package hub

import (
	"net"
	"time"
)

// connWriter writes a hijacked stream to its connection: first at once,
// without a deadline, as much as the socket buffer takes (where the
// platform allows it: see tryWrite), then, for what is left, waiting
// within Options.WriteTimeout. A listener that keeps up so costs no
// deadline update per message.
type connWriter struct {
	conn    net.Conn
	timeout time.Duration
	fast    fastWriter // nil: every write waits within the timeout
}

func newConnWriter(conn net.Conn, timeout time.Duration) *connWriter {
	return &connWriter{conn: conn, timeout: timeout, fast: newFastWriter(conn)}
}

// write writes b, all of it or an error; a timeout error when the client
// did not take it within the timeout.
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
	_, err := w.conn.Write(b)
	return err
}

// tryAll writes as much of b as the socket takes at once, and returns the
// rest (nil when it took everything); where the platform cannot write
// without waiting, it writes everything within the timeout.
func (w *connWriter) tryAll(b []byte) (rest []byte, err error) {
	if w.fast == nil {
		return nil, w.write(b)
	}
	n, err := w.fast.tryWrite(b)
	if err != nil || n == len(b) {
		return nil, err
	}
	return b[n:], nil
}

// fastWriter writes without waiting.
type fastWriter interface {
	// tryWrite writes as much of b as the socket takes at once, and
	// returns how much; an error only when the connection failed.
	tryWrite(b []byte) (int, error)
}
