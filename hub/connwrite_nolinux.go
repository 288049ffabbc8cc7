//go:build !linux

package hub

import "net"

// newDrained returns nil: this platform does not tell how much a socket
// has yet to send, so every write to a TLS connection is left to the
// stream's goroutine.
func newDrained(net.Conn) func() bool { return nil }
