//go:build unix

package hub

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// rawWriter writes with one write(2) on the connection's non-blocking
// socket, through syscall.RawConn.
type rawWriter struct {
	raw syscall.RawConn
	b   []byte // the bytes of the call under way
	n   int
	err error
	try func(fd uintptr) bool // made once: no allocation per write
}

func newFastWriter(conn net.Conn) fastWriter {
	sc, ok := conn.(syscall.Conn) // not a TLS connection
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawWriter{raw: raw}
	w.try = func(fd uintptr) bool {
		w.n, w.err = syscall.Write(int(fd), w.b)
		return true // done, whatever the outcome: never wait here
	}
	return w
}

func (w *rawWriter) tryWrite(b []byte) (int, error) {
	w.b = b
	err := w.raw.Write(w.try)
	n, werr := w.n, w.err
	w.b, w.err = nil, nil
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, nil // the deadline of an earlier write: write sets a new one
	case err != nil:
		return 0, err // the connection is closed
	case werr == syscall.EAGAIN || werr == syscall.EINTR:
		return 0, nil // the socket buffer is full: wait
	case werr != nil:
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", werr)}
	}
	return max(n, 0), nil
}
