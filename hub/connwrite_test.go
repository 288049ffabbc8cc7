package hub

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// tlsPair returns the server end of a TLS connection, hijacked from
// net/http as ServeListener hijacks it, and a reader of the client end's
// bytes after the response header.
func tlsPair(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	conns := make(chan net.Conn, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
		brw.Flush()
		conns <- conn
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	cc, err := tls.Dial("tcp", srv.Listener.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	if _, err := io.WriteString(cc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(cc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%v %v", resp, err)
	}
	sc := <-conns
	t.Cleanup(func() { sc.Close() })
	if _, ok := sc.(*tls.Conn); !ok {
		t.Fatalf("hijacked %T, want *tls.Conn", sc)
	}
	return sc, br
}

// waitDrained waits until w's socket has sent everything.
func waitDrained(t *testing.T, w *connWriter) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !w.drained() {
		if time.Now().After(deadline) {
			t.Fatal("the socket's send queue did not empty")
		}
		time.Sleep(time.Millisecond) // polling the socket's queue: no event to wait on
	}
}

// TestConnWriterTLSDrained: on Linux, tryAll writes a small message to a
// TLS connection itself when the socket has sent all it was given, and
// leaves a large one, or any while the socket still has bytes to send, to
// the stream's goroutine (it returns it whole); what it writes arrives in
// order after what was written before.
func TestConnWriterTLSDrained(t *testing.T) {
	sc, br := tlsPair(t)
	w := newConnWriter(sc, 10*time.Second)
	if w.fast != nil {
		t.Fatal("a TLS connection got a non-blocking writer")
	}
	if runtime.GOOS != "linux" {
		if w.drained != nil {
			t.Fatal("drained set outside Linux")
		}
		t.Skip("the send queue is known on Linux only")
	}
	if w.drained == nil {
		t.Fatal("no send-queue probe for a TLS connection over TCP")
	}
	read := func(n int) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatal(err)
		}
		return b
	}

	// Drained: written at once.
	waitDrained(t, w)
	small := []byte("data: one\n\n")
	if rest, err := w.tryAll(small); err != nil || rest != nil {
		t.Fatalf("tryAll of a small message to a drained socket: rest %d bytes, %v", len(rest), err)
	}
	if got := read(len(small)); !bytes.Equal(got, small) {
		t.Fatalf("got %q", got)
	}

	// Too large: left whole.
	waitDrained(t, w)
	large := bytes.Repeat([]byte("x"), drainedMax+1)
	if rest, err := w.tryAll(large); err != nil || len(rest) != len(large) {
		t.Fatalf("tryAll of %d bytes: rest %d, %v", len(large), len(rest), err)
	}

	// Bytes queued (the client does not read): left whole, even small.
	bulk := bytes.Repeat([]byte("y"), 8<<20)
	wrote := make(chan error, 1)
	go func() { wrote <- w.write(bulk) }()
	deadline := time.Now().Add(10 * time.Second)
	for w.drained() {
		if time.Now().After(deadline) {
			t.Fatal("the send queue stayed empty under an 8 MiB write")
		}
		time.Sleep(time.Millisecond) // polling the socket's queue
	}
	if rest, err := w.tryAll(small); err != nil || len(rest) != len(small) {
		t.Fatalf("tryAll to a socket with bytes queued: rest %d, %v", len(rest), err)
	}
	if got := read(len(bulk)); !bytes.Equal(got, bulk) {
		t.Fatal("the bulk write arrived altered")
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	waitDrained(t, w)
	if rest, err := w.tryAll(small); err != nil || rest != nil {
		t.Fatalf("tryAll once drained again: rest %d, %v", len(rest), err)
	}
	if got := read(len(small)); !bytes.Equal(got, small) {
		t.Fatalf("got %q after the bulk", got)
	}
}
