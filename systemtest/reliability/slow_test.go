package reliability

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// stalledListener connects over raw TCP (over TLS with HTTP/1.1 if cfg is
// not nil), reads the answer up to what marks it as listening, and then
// reads nothing more.
func stalledListener(t *testing.T, addr string, cfg *tls.Config, request, until string) net.Conn {
	t.Helper()
	conn, err := dialSmall(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		cfg = cfg.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			conn.Close()
			t.Fatal(err)
		}
		conn = tc
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
	if err == nil || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil // over TLS, a connection closed without close_notify is an unexpected EOF
	}
	return err
}

// stalledReadBuffer is the receive buffer of a stalled listener's socket,
// set small so that a bound of what its connection holds is known.
const stalledReadBuffer = 64 << 10

// dialSmall dials a TCP connection with a receive buffer of
// stalledReadBuffer.
func dialSmall(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if err := conn.(*net.TCPConn).SetReadBuffer(stalledReadBuffer); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// stalledStream is a stalled EventSource listener over HTTP/2: it reads
// the stream up to ": hi", then nothing more, so that its flow-control
// window fills.
type stalledStream struct {
	body   io.ReadCloser
	cancel context.CancelFunc
}

func stalledHTTP2Listener(t *testing.T, tg *target, ch string) *stalledStream {
	t.Helper()
	hc := tg.newHTTPClient(t) // a connection of its own
	hc.Transport.(*http.Transport).DialContext = dialSmall
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", tg.subURL(ch), nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("stalled listener: %s %s, want 200 over HTTP/2", resp.Proto, resp.Status)
	}
	var seen []byte
	b := make([]byte, 1)
	for !strings.Contains(string(seen), ": hi") {
		if _, err := resp.Body.Read(b); err != nil {
			t.Fatalf("stalled listener: answer %q: %v", seen, err)
		}
		seen = append(seen, b[0])
	}
	return &stalledStream{body: resp.Body, cancel: cancel}
}

// endedByPeer reports whether the stream ends (reset, or closed) when read
// to the end, within d.
func (s *stalledStream) endedByPeer(d time.Duration) error {
	timer := time.AfterFunc(d, s.cancel)
	defer timer.Stop()
	_, err := io.Copy(io.Discard, s.body)
	if !timer.Stop() {
		return fmt.Errorf("not ended within %v: %v", d, err)
	}
	return nil
}

// bufferedMax returns an upper bound of the bytes that the kernel, and an
// HTTP/2 client's flow-control window, can hold for a stalled listener
// (see dialSmall): the server's send buffer at its largest, the listener's
// receive buffer (which Linux doubles for its bookkeeping), the window; 0
// where the limits cannot be read.
func bufferedMax(http2 bool) int {
	most := func(path string) int {
		b, err := os.ReadFile(path)
		f := strings.Fields(string(b))
		if err != nil || len(f) != 3 {
			return -1
		}
		n, err := strconv.Atoi(f[2])
		if err != nil {
			return -1
		}
		return n
	}
	w := most("/proc/sys/net/ipv4/tcp_wmem")
	if w < 0 {
		return 0
	}
	n := w + 2*stalledReadBuffer
	if http2 {
		n += 4 << 20 // net/http's HTTP/2 client stream window
	}
	return n
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
	runSlow(t, plain, 300*time.Millisecond)
}

// TestSlowConsumersTLS: TestSlowConsumers over TLS with HTTP/1.1, and over
// HTTP/2, where the stalled EventSource listener is an HTTP/2 stream whose
// flow-control window fills (a WebSocket upgrades over TLS with HTTP/1.1).
// With a WriteTimeout of seconds, the stalled listeners are still connected
// once more bytes were published than their sockets and windows can hold:
// so no Publish waited on a write to them, which would have waited until
// the timeout cut it.
func TestSlowConsumersTLS(t *testing.T) {
	for _, p := range tlsProtos {
		t.Run(p.name, func(t *testing.T) { runSlow(t, p, 3*time.Second) })
	}
}

func runSlow(t *testing.T, p proto, writeTimeout time.Duration) {
	const size = 64 << 10
	messages := pick(512, 4096)
	tg, h := hubTargetOver(t, hub.Options{WriteTimeout: writeTimeout, BufferLength: 16, MessageTTL: -1}, p)
	ch, cursor := newChannel(t, tg)
	ctx, cancel := context.WithTimeout(context.Background(), pick(2*time.Minute, 10*time.Minute))
	defer cancel()
	addr := strings.TrimPrefix(strings.TrimPrefix(tg.base, "http://"), "https://")
	path := "/sub/" + ch

	var esConn net.Conn
	var esStream *stalledStream
	if p.http2 {
		esStream = stalledHTTP2Listener(t, tg, ch)
	} else {
		esConn = stalledListener(t, addr, tg.tls, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\nAccept: text/event-stream\r\n\r\n", ": hi")
	}
	wsConn := stalledListener(t, addr, tg.tls, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "\r\n\r\n")

	// The healthy listener reads everything; got is its last sequence
	// number, bad what went wrong.
	hc := tg.newHTTPClient(t)
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

	// Once this many messages are published, writes to the stalled
	// listeners have had to wait.
	full := 0
	if p.tls {
		if n := bufferedMax(p.http2); n > 0 {
			full = n/size + n/size/4 + 1
		}
		if full == 0 || full > messages {
			t.Logf("no bound on what the stalled listeners' sockets hold: not checking that they are still connected when full")
			full = 0
		}
	}
	connectedWhenFull := -1

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
			maxPublish, maxAt, maxSubs = took, seq, rc.Listeners
		}
		if rc.Listeners == 3 {
			publishedStalled++
		}
		if seq%32 == 0 {
			peak = max(peak, liveHeap())
		}
		if seq == full {
			connectedWhenFull = rc.Listeners
			if st := h.Stats(); st.SlowDisconnects != 0 || st.Disconnects != (hub.DisconnectCounts{}) {
				t.Errorf("a stalled listener was cut before %v: %+v", writeTimeout, st.Disconnects)
			}
		}
	}
	if full > 0 && connectedWhenFull != 3 {
		t.Errorf("%d listeners when %d MiB were published; want the stalled ones still connected, not waited on by Publish",
			connectedWhenFull, full*size>>20)
	}
	if err := got.wait(ctx, messages); err != nil {
		t.Fatalf("healthy listener got %d of %d: %v", got.get(), messages, err)
	}
	if !waitFor(30*time.Second, func() bool { return subscribers(h, ch) == 1 }) {
		t.Errorf("%d listeners after publishing %d MiB; want the 2 stalled ones gone", subscribers(h, ch), messages*size>>20)
	}
	for name, c := range map[string]net.Conn{"EventSource": esConn, "WebSocket": wsConn} {
		if c == nil {
			continue
		}
		if err := closedByPeer(c, 10*time.Second); err != nil {
			t.Errorf("stalled %s listener's connection was not closed by the hub: %v", name, err)
		}
	}
	if esStream != nil {
		if err := esStream.endedByPeer(10 * time.Second); err != nil {
			t.Errorf("stalled EventSource listener's HTTP/2 stream was not ended by the hub: %v", err)
		}
	}
	st := h.Stats()
	if st.SlowDisconnects < 2 || st.Disconnects.Slow != st.SlowDisconnects {
		t.Errorf("Stats().SlowDisconnects = %d, Disconnects %+v; want 2 slow", st.SlowDisconnects, st.Disconnects)
	}
	growth := int64(peak) - int64(base)
	const bound = 24 << 20
	if growth > bound {
		t.Errorf("live heap grew by %d MiB while %d MiB were published; want under %d MiB", growth>>20, messages*size>>20, bound>>20)
	}
	t.Logf("RESULT test=slow proto=%s published_mib=%d published_while_stalled=%d max_publish_ms=%.2f max_publish_seq=%d max_publish_listeners=%d heap_base_mib=%.1f heap_peak_mib=%.1f slow_disconnects=%d",
		p.name, messages*size>>20, publishedStalled, float64(maxPublish.Microseconds())/1000, maxAt, maxSubs,
		float64(base)/(1<<20), float64(peak)/(1<<20), st.SlowDisconnects)
}
