package reliability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// stalledListener connects over raw TCP, reads
// the answer up to what marks it as listening, and then reads nothing more.
func stalledListener(t *testing.T, addr, request, until string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var seen []byte
	b := make([]byte, 1)
	for !strings.Contains(string(seen), until) {
		if _, err := conn.Read(b); err != nil {
			t.Fatalf("%q: answer %q: %v", until, seen, err)
		}
		seen = append(seen, b[0])
	}
	conn.SetReadDeadline(time.Time{})
	return conn
}

// closedByPeer reports whether conn ends (EOF or reset) when read to the
// end, within d.
func closedByPeer(conn net.Conn, d time.Duration) error {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	if err == nil || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}

// liveHeap returns the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSlowConsumers: an EventSource listener and a WebSocket listener that
// stop reading while 64 KiB messages are published delay neither Publish
// nor a healthy listener of the same channel, which gets every message in
// order; each stalled one is disconnected once a write to it has waited
// Options.WriteTimeout, and the hub's live heap stays far below what was
// published.
func TestSlowConsumers(t *testing.T) {
	const size = 64 << 10
	messages := pick(512, 4096)
	tg, h := hubTarget(t, hub.Options{WriteTimeout: 300 * time.Millisecond, BufferLength: 16, MessageTTL: -1})
	ch, cursor := newChannel(t, tg)
	ctx, cancel := context.WithTimeout(context.Background(), pick(2*time.Minute, 10*time.Minute))
	defer cancel()
	addr := strings.TrimPrefix(tg.base, "http://")
	path := "/sub/" + ch

	esConn := stalledListener(t, addr, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\nAccept: text/event-stream\r\n\r\n", ": hi")
	wsConn := stalledListener(t, addr, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "\r\n\r\n")

	// The healthy listener reads everything; got is its last sequence
	// number, bad what went wrong.
	hc := newHTTPClient(t)
	es, err := openEventSource(ctx, hc, tg.subURL(ch), cursor)
	if err != nil {
		t.Fatal(err)
	}
	got := newCounter()
	bad := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for last := 0; last < messages; {
			ev, err := es.next()
			if err == nil {
				f, _, _ := strings.Cut(ev.body, " ")
				var seq int
				seq, err = strconv.Atoi(strings.TrimPrefix(f, "seq="))
				if err == nil && (seq != last+1 || len(ev.body) != size || ev.gap != "") {
					err = fmt.Errorf("message %d (%d bytes, gap %q) after %d", seq, len(ev.body), ev.gap, last)
				}
				last = seq
			}
			if err != nil {
				bad <- fmt.Errorf("healthy listener: %w", err)
				return
			}
			got.set(last)
		}
	}()
	defer func() { es.close(); <-readerDone }()
	if !waitFor(10*time.Second, func() bool { return subscribers(h, ch) == 3 }) {
		t.Fatalf("%d listeners, want 3", subscribers(h, ch))
	}

	base := liveHeap()
	peak := base
	pad := strings.Repeat("x", size)
	var maxPublish time.Duration
	maxAt, maxSubs := 0, 0 // the slowest Publish: its message and the listeners it reported
	publishedStalled := 0
	for seq := 1; seq <= messages; seq++ {
		if err := got.wait(ctx, seq-8); err != nil { // stay within the buffer of the healthy listener
			select {
			case e := <-bad:
				t.Fatal(e)
			default:
				t.Fatalf("healthy listener: %v", err)
			}
		}
		b := "seq=" + strconv.Itoa(seq) + " "
		b += pad[len(b):]
		start := time.Now()
		rc, err := h.Publish(ctx, ch, relay.Message{Body: []byte(b), ContentType: "text/plain"})
		took := time.Since(start)
		if err != nil {
			t.Fatalf("publish %d: %v", seq, err)
		}
		if took > maxPublish {
			maxPublish, maxAt, maxSubs = took, seq, rc.Subscribers
		}
		if rc.Subscribers == 3 {
			publishedStalled++
		}
		if seq%32 == 0 {
			peak = max(peak, liveHeap())
		}
	}
	if err := got.wait(ctx, messages); err != nil {
		t.Fatalf("healthy listener got %d of %d: %v", got.get(), messages, err)
	}
	if !waitFor(30*time.Second, func() bool { return subscribers(h, ch) == 1 }) {
		t.Errorf("%d listeners after publishing %d MiB; want the 2 stalled ones gone", subscribers(h, ch), messages*size>>20)
	}
	for name, c := range map[string]net.Conn{"EventSource": esConn, "WebSocket": wsConn} {
		if err := closedByPeer(c, 10*time.Second); err != nil {
			t.Errorf("stalled %s listener's connection was not closed by the hub: %v", name, err)
		}
	}
	st := h.Stats()
	if st.SlowDisconnects < 2 {
		t.Errorf("Stats().SlowDisconnects = %d, want 2", st.SlowDisconnects)
	}
	growth := int64(peak) - int64(base)
	const bound = 24 << 20
	if growth > bound {
		t.Errorf("live heap grew by %d MiB while %d MiB were published; want under %d MiB", growth>>20, messages*size>>20, bound>>20)
	}
	t.Logf("RESULT test=slow published_mib=%d published_while_stalled=%d max_publish_ms=%.2f max_publish_seq=%d max_publish_listeners=%d heap_base_mib=%.1f heap_peak_mib=%.1f slow_disconnects=%d",
		messages*size>>20, publishedStalled, float64(maxPublish.Microseconds())/1000, maxAt, maxSubs,
		float64(base)/(1<<20), float64(peak)/(1<<20), st.SlowDisconnects)
}
