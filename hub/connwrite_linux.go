package hub

import (
	"crypto/tls"
	"net"
	"syscall"
	"unsafe"
)

// newDrained returns, for a TLS connection over a socket, a function that
// reports whether the socket has sent all it was given (ioctl TIOCOUTQ,
// alias SIOCOUTQ: the bytes not yet sent or not yet acknowledged); nil for
// another connection.
func newDrained(conn net.Conn) func() bool {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil
	}
	sc, ok := tc.NetConn().(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var (
		queued int32
		errno  syscall.Errno
	)
	probe := func(fd uintptr) { // made once: no allocation per call
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&queued)))
	}
	return func() bool {
		if err := raw.Control(probe); err != nil || errno != 0 {
			return false
		}
		return queued == 0
	}
}
