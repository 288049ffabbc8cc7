package nchan

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// These tests are about the Client's own transport (wire), which it uses
// for http:// URLs unless Options.HTTPClient is set.

const infoBody = "queued messages: 1\r\nlast requested: -1 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1795742138:0"

// rawServer serves HTTP/1.1 on a real TCP listener with handle, which gets
// each parsed request (its body not read) with its number on its
// connection (from 1) and writes the raw answer;
// returning false closes the connection. It counts requests and
// connections.
type rawServer struct {
	URL      string
	requests atomic.Int64
	conns    atomic.Int64
	// pipelined counts the answered requests that had the next one
	// already behind them in the read buffer.
	pipelined atomic.Int64
	ln        net.Listener
	wg        sync.WaitGroup
}

func newRawServer(t *testing.T, handle func(r *http.Request, nth int, w io.Writer) bool) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{URL: "http://" + ln.Addr().String(), ln: ln}
	var mu sync.Mutex
	var open []net.Conn
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			mu.Lock()
			open = append(open, conn)
			mu.Unlock()
			s.wg.Go(func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for nth := 1; ; nth++ {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					s.requests.Add(1)
					if !handle(r, nth, conn) {
						return
					}
					if br.Buffered() > 0 {
						s.pipelined.Add(1)
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func writeAnswer(w io.Writer, status int, extra, body string) {
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n%s", status, http.StatusText(status), len(body), extra, body)
}

// A server that closes each connection after a few requests, saying so
// (nginx's keepalive_requests), loses and doubles no publish.
func TestWireKeepAliveLimit(t *testing.T) {
	pm := newPushModule(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/publish", pm.publisher)
	type counter struct{ n atomic.Int64 }
	type key struct{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(key{}).(*counter).n.Add(1)%3 == 0 {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	}))
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, key{}, new(counter))
	}
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			pm.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(srv.URL+"/publish?channel={channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := c.Open(ctx, "ka"); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range each {
				if _, err := c.Publish(ctx, "ka", relay.Message{Body: []byte(fmt.Sprintf("%d-%d", g, i))}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := pm.count("POST"); n != workers*each {
		t.Errorf("%d POSTs reached the server, want %d", n, workers*each)
	}
	if n := pm.conns.Load(); n < workers*each/3 {
		t.Errorf("%d connections for %d requests closed every third: the limit was not met", n, workers*each+2)
	}
}

// A server that drops kept-alive connections without answering (as nginx
// closing an idle connection while the request is on its way) makes the
// Client retry on a new connection; nothing is lost or doubled.
func TestWireDroppedKeepAliveRetried(t *testing.T) {
	var posts, drops atomic.Int64
	var seen atomic.Int64
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodGet {
			writeAnswer(w, 200, "", infoBody)
			return true
		}
		// Every fifth request that is not the first on its connection (a
		// POST on a fresh connection is never repeated).
		if nth > 1 && seen.Add(1)%5 == 0 {
			drops.Add(1)
			return false
		}
		posts.Add(1)
		writeAnswer(w, 202, "", infoBody)
		return true
	})
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := c.Info(ctx, "d"); err != nil { // one kept-alive connection
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		if _, err := c.Publish(ctx, "d", relay.Message{Body: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if posts.Load() != n || drops.Load() == 0 {
		t.Errorf("%d POSTs answered, %d dropped; want %d answered and some dropped", posts.Load(), drops.Load(), n)
	}
}

// A POST sent on a fresh connection that breaks without an answer may have
// been published: it is not sent again.
func TestWireFreshConnectionPostNotRepeated(t *testing.T) {
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		return false
	})
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.markOpen("f")
	_, err = c.Publish(ctxTimeout(t, 10*time.Second), "f", relay.Message{Body: []byte("x")})
	if err == nil || !errors.Is(err, io.EOF) {
		t.Fatalf("Publish whose answer was lost: %v, want an error wrapping io.EOF", err)
	}
	if n := srv.requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1 (no retry)", n)
	}
}

// nginx answers 413 (body too large) and 400 before reading the whole
// request and closes the connection; the Client reports the status and
// the next call works on a new connection.
func TestWireEarlyAnswerClosesConnection(t *testing.T) {
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		switch {
		case r.Method == http.MethodGet:
			io.Copy(io.Discard, r.Body)
			writeAnswer(w, 200, "", infoBody)
			return true
		case r.ContentLength > 1024:
			// Not a byte of the body read.
			writeAnswer(w, 413, "Content-Type: text/html\r\nConnection: close\r\n", "<html>413</html>")
			return false
		case strings.HasSuffix(r.URL.Path, "/bad"):
			io.Copy(io.Discard, r.Body)
			writeAnswer(w, 400, "Content-Type: text/html\r\nConnection: close\r\n", "<html>400</html>")
			return false
		}
		io.Copy(io.Discard, r.Body)
		writeAnswer(w, 202, "", infoBody)
		return true
	})
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 10*time.Second)
	for _, size := range []int{2 << 10, 8 << 20} {
		before := srv.requests.Load()
		_, err := c.Publish(ctx, "big", relay.Message{Body: make([]byte, size)})
		var e *Error
		if !errors.Is(err, relay.ErrMessageTooLarge) || !errors.As(err, &e) || e.Status != 413 {
			t.Errorf("%d-byte publish: %v, want a 413 *Error wrapping ErrMessageTooLarge", size, err)
		}
		if r, err := c.Publish(ctx, "big", relay.Message{Body: []byte("fits")}); err != nil || r.Queued != 1 {
			t.Errorf("publish after 413: %+v, %v", r, err)
		}
		if n := srv.requests.Load() - before; n < 2 || n > 3 { // POST, (GET,) POST
			t.Errorf("%d requests, want the two POSTs (and a GET)", n)
		}
	}
	_, err = c.Publish(ctx, "bad", relay.Message{Body: []byte("x")})
	var e *Error
	if !errors.As(err, &e) || e.Status != 400 {
		t.Errorf("publish answered 400: %v, want a 400 *Error", err)
	}
	if _, err := c.Publish(ctx, "big", relay.Message{Body: []byte("fits")}); err != nil {
		t.Errorf("publish after 400: %v", err)
	}
}

// A server that never answers: the context's deadline, or its
// cancellation, ends the call with the context's error, and the POST is not
// sent again.
func TestWireContextEndsCall(t *testing.T) {
	got := make(chan struct{}, 10)
	release := make(chan struct{})
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		got <- struct{}{}
		<-release
		return false
	})
	t.Cleanup(func() { close(release) }) // before the server's cleanup
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.markOpen("slow")
	m := relay.Message{Body: []byte("x")}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := c.Publish(ctx, "slow", m)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Publish past its deadline: %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Publish did not return after its deadline")
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := c.Publish(ctx, "slow", m)
		done <- err
	}()
	<-got // the first POST
	<-got // this one arrived: now cancel
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Publish: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Publish did not return after its context was cancelled")
	}
	if n := srv.requests.Load(); n != 2 {
		t.Errorf("%d requests, want 2 (no retry)", n)
	}
}

// Answers in the forms other servers use: chunked, HTTP/1.0, no length.
func TestWireAnswerForms(t *testing.T) {
	forms := map[string]string{
		"chunked": "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(infoBody), infoBody),
		"http10":   "HTTP/1.0 202 Accepted\r\nContent-Length: " + strconv.Itoa(len(infoBody)) + "\r\n\r\n" + infoBody,
		"unsized":  "HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n" + infoBody,
		"interim":  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: " + strconv.Itoa(len(infoBody)) + "\r\n\r\n" + infoBody,
		"lf-only":  "HTTP/1.1 202 Accepted\nContent-Length: " + strconv.Itoa(len(infoBody)) + "\n\n" + infoBody,
		"garbage":  "SMTP ready\r\n\r\n",
		"bad-size": "HTTP/1.1 202 Accepted\r\nContent-Length: x\r\n\r\n",
	}
	for name, answer := range forms {
		t.Run(name, func(t *testing.T) {
			srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
				io.Copy(io.Discard, r.Body)
				io.WriteString(w, answer)
				return !strings.Contains(answer, "close") && !strings.HasPrefix(answer, "HTTP/1.0")
			})
			c, err := New(srv.URL+"/pub/{channel}", Options{})
			if err != nil {
				t.Fatal(err)
			}
			c.markOpen("a")
			ctx := ctxTimeout(t, 10*time.Second)
			for range 2 {
				r, err := c.Publish(ctx, "a", relay.Message{Body: []byte("x")})
				if strings.HasPrefix(name, "garbage") || strings.HasPrefix(name, "bad") {
					if err == nil {
						t.Fatalf("answer %q accepted", answer)
					}
					return
				}
				if err != nil || r.ID != "1795742138:0" {
					t.Fatalf("Publish: %+v, %v", r, err)
				}
			}
		})
	}
}

// What goes on the wire: the request target from the template (path or
// query), Host, Content-Length only where a body belongs (0 for an empty PUT
// or POST), nothing else beyond the message's headers.
func TestWireRequestShape(t *testing.T) {
	type seen struct {
		method, uri, host string
		length            int64
		te                []string
		header            http.Header
	}
	got := make(chan seen, 10)
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		got <- seen{r.Method, r.RequestURI, r.Host, r.ContentLength, r.TransferEncoding, r.Header}
		switch r.Method {
		case http.MethodGet:
			writeAnswer(w, 404, "", "")
		case http.MethodDelete:
			writeAnswer(w, 200, "", infoBody)
		default:
			writeAnswer(w, 202, "", infoBody)
		}
		return true
	})
	for _, tc := range []struct{ tmpl, uri string }{
		{srv.URL + "/pub/{channel}", "/pub/a.b"},
		{srv.URL + "/x?id={channel}&g=1", "/x?id=a.b&g=1"},
		{srv.URL + "?id={channel}", "/?id=a.b"},
	} {
		c, err := New(tc.tmpl, Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxTimeout(t, 10*time.Second)
		if _, err := c.Open(ctx, "a.b"); err != nil { // GET 404, PUT
			t.Fatal(err)
		}
		if _, err := c.Publish(ctx, "a.b", relay.Message{Body: []byte("hi"), ContentType: "text/plain", Event: "e"}); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(ctx, "a.b"); err != nil {
			t.Fatal(err)
		}
		want := []struct {
			method string
			length int64
		}{{"GET", 0}, {"PUT", 0}, {"POST", 2}, {"DELETE", 0}}
		for _, w := range want {
			s := <-got
			if s.method != w.method || s.uri != tc.uri || s.host != srv.URL[len("http://"):] || s.length != w.length || len(s.te) != 0 {
				t.Errorf("%s: %s %s Host %s length %d TE %v; want %s %s length %d", tc.tmpl, s.method, s.uri, s.host, s.length, s.te, w.method, tc.uri, w.length)
			}
			_, hasLength := s.header["Content-Length"]
			if hasLength != (w.method == "PUT" || w.method == "POST") {
				t.Errorf("%s %s: Content-Length present %v", tc.tmpl, w.method, hasLength)
			}
			if w.method == "POST" && (s.header.Get("Content-Type") != "text/plain" || s.header.Get("X-EventSource-Event") != "e" || len(s.header) != 3) {
				t.Errorf("POST headers %v", s.header)
			}
		}
	}
}

// https URLs and URLs with user info go through net/http.
func TestWireOnlyForPlainHTTP(t *testing.T) {
	for tmpl, wantWire := range map[string]bool{
		"http://127.0.0.1:1/pub/{channel}":     true,
		"http://localhost/pub/{channel}":       true,
		"https://127.0.0.1:1/pub/{channel}":    false,
		"http://u:p@127.0.0.1:1/pub/{channel}": false,
		"http://[::1]:8080/pub/{channel}":      true,
	} {
		c, err := New(tmpl, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if (c.wire != nil) != wantWire {
			t.Errorf("%s: own transport %v, want %v", tmpl, c.wire != nil, wantWire)
		}
	}
	c, _ := New("http://localhost/pub/{channel}", Options{})
	if c.wire.addr != "localhost:80" || c.wire.host != "localhost" {
		t.Errorf("default port: dial %q Host %q", c.wire.addr, c.wire.host)
	}
}

// scriptedBatch sends n POSTs (to /pub/c0 ... /pub/c<n-1>) as one
// pipelined batch to a server that reads them all and then runs answer,
// and closes the connection. With reused, one GET is served on the
// connection first, so that the batch goes out on a kept-alive connection.
func scriptedBatch(t *testing.T, n int, reused bool, answer func(w io.Writer, reqs []*http.Request)) []*wireCall {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		read := func() (*http.Request, error) {
			r, err := http.ReadRequest(br)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(io.Discard, r.Body)
			return r, err
		}
		if reused {
			if _, err := read(); err != nil {
				served <- err
				return
			}
			writeAnswer(conn, 200, "", infoBody)
		}
		reqs := make([]*http.Request, n)
		for i := range reqs {
			if reqs[i], err = read(); err != nil {
				served <- err
				return
			}
		}
		answer(conn, reqs)
		served <- nil
	}()
	u, _ := url.Parse("http://" + ln.Addr().String())
	w := newWire(u)
	defer w.closeIdle()
	ctx := ctxTimeout(t, 10*time.Second)
	if reused {
		var pr progress
		if st, _, err := w.roundTrip1(ctx, [3]string{"/pub/", "warm", ""}, &request{method: http.MethodGet}, &pr); err != nil || st != 200 {
			t.Fatalf("first GET: %d, %v", st, err)
		}
	}
	batch := make([]*wireCall, n)
	for i := range batch {
		batch[i] = &wireCall{ctx: ctx, target: [3]string{"/pub/", "c" + strconv.Itoa(i), ""},
			rq: request{method: http.MethodPost, body: []byte(strconv.Itoa(i))}, done: make(chan struct{}, 1)}
	}
	w.pipeline(batch)
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	for i, c := range batch[1:] {
		select {
		case <-c.done:
		default:
			t.Errorf("call %d not signalled", i+1)
		}
	}
	return batch
}

// A pipelined batch: answers go to their requests in order.
func TestWirePipelineAnswersInOrder(t *testing.T) {
	batch := scriptedBatch(t, 5, false, func(w io.Writer, reqs []*http.Request) {
		var all strings.Builder
		for _, r := range reqs {
			writeAnswer(&all, 202, "", "answer to "+r.URL.Path)
		}
		io.WriteString(w, all.String()) // in one piece, as nginx often does
	})
	for i, c := range batch {
		if want := "answer to /pub/c" + strconv.Itoa(i); c.err != nil || c.status != 202 || string(c.body) != want {
			t.Errorf("call %d: %d %q %v, want 202 %q", i, c.status, c.body, c.err, want)
		}
	}
}

// An answer that says Connection: close (nginx's keepalive_requests, or a
// 413 or 400) ends the batch: the requests behind it were not carried out
// and may be sent again.
func TestWirePipelineCloseAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
	}{{"keepalive-limit", 202}, {"413", 413}, {"400", 400}} {
		t.Run(tc.name, func(t *testing.T) {
			batch := scriptedBatch(t, 4, true, func(w io.Writer, reqs []*http.Request) {
				writeAnswer(w, 202, "", "first")
				writeAnswer(w, tc.status, "Connection: close\r\n", "second")
			})
			if c := batch[0]; c.err != nil || c.status != 202 || string(c.body) != "first" {
				t.Errorf("call 0: %d %q %v", c.status, c.body, c.err)
			}
			if c := batch[1]; c.err != nil || c.status != tc.status || string(c.body) != "second" {
				t.Errorf("call 1: %d %q %v, want %d", c.status, c.body, c.err, tc.status)
			}
			for i, c := range batch[2:] {
				if !errors.Is(c.err, errNotCarriedOut) || !retryable(c.err, http.MethodPost, &c.pr) {
					t.Errorf("call %d: %v (progress %+v), want a retryable errNotCarriedOut", i+2, c.err, c.pr)
				}
			}
		})
	}
}

// A connection that breaks after some answers of a batch, without saying
// it would: the requests without an answer may have been carried out and
// are not sent again.
func TestWirePipelineBrokenAfterAnswer(t *testing.T) {
	for _, reused := range []bool{false, true} {
		t.Run(fmt.Sprintf("reused=%v", reused), func(t *testing.T) {
			batch := scriptedBatch(t, 4, reused, func(w io.Writer, reqs []*http.Request) {
				writeAnswer(w, 202, "", "first")
			})
			if c := batch[0]; c.err != nil || c.status != 202 {
				t.Errorf("call 0: %d %v", c.status, c.err)
			}
			for i, c := range batch[1:] {
				if !errors.Is(c.err, io.EOF) || !strings.Contains(c.err.Error(), "may or may not") ||
					retryable(c.err, http.MethodPost, &c.pr) {
					t.Errorf("call %d: %v (progress %+v), want a final io.EOF error saying it may or may not have been carried out", i+1, c.err, c.pr)
				}
			}
		})
	}
}

// A kept-alive connection closed before any answer of the batch (nginx
// closing it idle as the batch went out): every request is sent again; on
// a fresh connection none is.
func TestWirePipelineBrokenBeforeAnswer(t *testing.T) {
	for _, reused := range []bool{false, true} {
		t.Run(fmt.Sprintf("reused=%v", reused), func(t *testing.T) {
			batch := scriptedBatch(t, 3, reused, func(io.Writer, []*http.Request) {})
			for i, c := range batch {
				if c.err == nil || retryable(c.err, http.MethodPost, &c.pr) != reused {
					t.Errorf("call %d: %v (progress %+v), want an error, retryable: %v", i, c.err, c.pr, reused)
				}
			}
		})
	}
}

// publishUnderLoad starts one publish per body, each in a goroutine of its
// own, the first wirePipeConns held by the server (which blocks on hold)
// until the rest wait in the Client's queue; then it releases the server.
// It returns each publish's result and error, in body order.
func publishUnderLoad(t *testing.T, c *Client, hold chan struct{}, ctxs []context.Context, bodies []string) ([]relay.Receipt, []error) {
	t.Helper()
	res := make([]relay.Receipt, len(bodies))
	errs := make([]error, len(bodies))
	var wg sync.WaitGroup
	for i, b := range bodies {
		wg.Go(func() {
			res[i], errs[i] = c.Publish(ctxs[i], "p", relay.Message{Body: []byte(b)})
		})
	}
	waitQueue(t, c, len(bodies)-wirePipeConns)
	close(hold)
	wg.Wait()
	return res, errs
}

// waitQueue waits until n requests wait in the Client's queue.
func waitQueue(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.wire.pmu.Lock()
		got := len(c.wire.queue)
		c.wire.pmu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond) // polling interval
	}
}

// queuedAnswerServer answers each POST with 202 and "queued messages: <its
// body>", after hold is closed.
func queuedAnswerServer(t *testing.T, hold chan struct{}, extra func(r *http.Request, body []byte, nth int, w io.Writer) (handled, keep bool)) *rawServer {
	return newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost {
			writeAnswer(w, 200, "", infoBody)
			return true
		}
		<-hold
		if extra != nil {
			if handled, keep := extra(r, body, nth, w); handled {
				return keep
			}
		}
		writeAnswer(w, 202, "", queuedInfo(body))
		return true
	})
}

// queuedInfo is an info body with body as the count of queued messages.
func queuedInfo(body []byte) string {
	return "queued messages: " + string(body) + "\r\nlast requested: 0 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1:0"
}

// Under load, publishes are pipelined and each gets its own answer.
func TestWirePipelineUnderLoad(t *testing.T) {
	hold := make(chan struct{})
	srv := queuedAnswerServer(t, hold, nil)
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	c.markOpen("p")
	const n = 64
	ctxs := make([]context.Context, n)
	bodies := make([]string, n)
	ctx := ctxTimeout(t, 20*time.Second)
	for i := range n {
		ctxs[i], bodies[i] = ctx, strconv.Itoa(i+1)
	}
	res, errs := publishUnderLoad(t, c, hold, ctxs, bodies)
	for i := range n {
		if errs[i] != nil || res[i].Queued != i+1 {
			t.Errorf("publish %d: %+v, %v; want its own answer, queued %d", i, res[i], errs[i], i+1)
		}
	}
	if got := srv.requests.Load(); got != n {
		t.Errorf("%d requests reached the server, want %d", got, n)
	}
	if c.wire.piped.Load() == 0 || srv.pipelined.Load() == 0 {
		t.Errorf("%d requests sent pipelined, %d seen pipelined; want some", c.wire.piped.Load(), srv.pipelined.Load())
	}
}

// A publish whose context ends while it is in a pipelined batch ends with
// the context's error (or its answer, if it leads the batch); its answer is
// read and dropped, the others get theirs.
func TestWirePipelineCancelOne(t *testing.T) {
	hold := make(chan struct{})
	slowSeen, slowGo := make(chan struct{}), make(chan struct{})
	srv := queuedAnswerServer(t, hold, func(r *http.Request, body []byte, nth int, w io.Writer) (bool, bool) {
		if string(body) == "1" { // the slow one
			close(slowSeen)
			<-slowGo
		}
		return false, false
	})
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	c.markOpen("p")
	const n = 48
	ctx := ctxTimeout(t, 20*time.Second)
	slowCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctxs := make([]context.Context, n)
	bodies := make([]string, n)
	for i := range n {
		ctxs[i], bodies[i] = ctx, strconv.Itoa(i+1)
	}
	ctxs[0] = slowCtx
	go func() {
		select {
		case <-slowSeen:
			cancel()
			close(slowGo)
		case <-ctx.Done():
		}
	}()
	res, errs := publishUnderLoad(t, c, hold, ctxs, bodies)
	if errs[0] != nil && !errors.Is(errs[0], context.Canceled) {
		t.Errorf("cancelled publish: %v, want context.Canceled (or its answer)", errs[0])
	}
	if errs[0] == nil && res[0].Queued != 1 {
		t.Errorf("cancelled publish: %+v, want its own answer", res[0])
	}
	for i := 1; i < n; i++ {
		if errs[i] != nil || res[i].Queued != i+1 {
			t.Errorf("publish %d: %+v, %v; want its own answer, queued %d", i, res[i], errs[i], i+1)
		}
	}
	if got := srv.requests.Load(); got != n {
		t.Errorf("%d requests reached the server, want %d", got, n)
	}
	// The connections stay usable.
	for i := range 3 * wirePipeConns {
		r, err := c.Publish(ctx, "p", relay.Message{Body: []byte(strconv.Itoa(100 + i))})
		if err != nil || r.Queued != 100+i {
			t.Errorf("publish after: %+v, %v; want queued %d", r, err, 100+i)
		}
	}
}

// A server that closes each connection after every third request, saying
// so, while 64 goroutines publish: pipelined requests behind the closing
// answer are sent again, none is lost or doubled.
func TestWirePipelineKeepAliveLimit(t *testing.T) {
	hold := make(chan struct{})
	var posts atomic.Int64
	srv := queuedAnswerServer(t, hold, func(r *http.Request, body []byte, nth int, w io.Writer) (bool, bool) {
		posts.Add(1)
		if nth%3 == 0 {
			writeAnswer(w, 202, "Connection: close\r\n", queuedInfo(body))
			return true, false
		}
		return false, false
	})
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	c.markOpen("p")
	const n = 64 * 5
	ctx := ctxTimeout(t, 30*time.Second)
	ctxs := make([]context.Context, n)
	bodies := make([]string, n)
	for i := range n {
		ctxs[i], bodies[i] = ctx, strconv.Itoa(i+1)
	}
	res, errs := publishUnderLoad(t, c, hold, ctxs, bodies)
	for i := range n {
		if errs[i] != nil || res[i].Queued != i+1 {
			t.Errorf("publish %d: %+v, %v; want its own answer, queued %d", i, res[i], errs[i], i+1)
		}
	}
	if got := posts.Load(); got != n {
		t.Errorf("%d POSTs carried out, want %d", got, n)
	}
	if c.wire.piped.Load() == 0 || srv.pipelined.Load() == 0 {
		t.Errorf("%d requests sent pipelined, %d seen pipelined; want some", c.wire.piped.Load(), srv.pipelined.Load())
	}
}

// Publishes waiting in the queue, or in flight on a server that does not
// answer, all end when their contexts are cancelled; the Client works on
// afterwards.
func TestWirePipelineCancelAll(t *testing.T) {
	hold := make(chan struct{})
	srv := queuedAnswerServer(t, hold, nil)
	c, err := New(srv.URL+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	c.markOpen("p")
	const n = 40
	ctx, cancel := context.WithCancel(ctxTimeout(t, 20*time.Second))
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := c.Publish(ctx, "p", relay.Message{Body: []byte(strconv.Itoa(i))})
			errs <- err
		}()
	}
	waitQueue(t, c, n-wirePipeConns)
	cancel()
	for range n {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Errorf("publish: %v, want context.Canceled", err)
		}
	}
	close(hold)
	ctx2 := ctxTimeout(t, 10*time.Second)
	if r, err := c.Publish(ctx2, "p", relay.Message{Body: []byte("7")}); err != nil || r.Queued != 7 {
		t.Errorf("publish after: %+v, %v; want queued 7", r, err)
	}
	c.wire.pmu.Lock()
	inFlight, queued := c.wire.inFlight, len(c.wire.queue)
	c.wire.pmu.Unlock()
	if inFlight != 0 || queued != 0 {
		t.Errorf("%d in flight, %d queued after all ended; want 0, 0", inFlight, queued)
	}
}

// When every caller still waiting in a pipelined batch has left (their
// contexts ended), the batch's I/O is interrupted, even though the leader's
// own context (here without a deadline) goes on: the leader, which has its
// answer, does not wait for answers nobody wants.
func TestWirePipelineAllLeft(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		for range 3 {
			r, err := http.ReadRequest(br)
			if err != nil {
				served <- err
				return
			}
			io.Copy(io.Discard, r.Body)
		}
		writeAnswer(conn, 202, "", "first")
		cancel() // the two others leave
		served <- nil
		// Hold the connection open until the test ends; a broken
		// interrupt shows as EOF instead of a deadline error.
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
	}()
	defer close(release)
	u, _ := url.Parse("http://" + ln.Addr().String())
	w := newWire(u)
	defer w.closeIdle()
	batch := make([]*wireCall, 3)
	for i := range batch {
		cctx := ctx
		if i == 0 {
			cctx = context.Background()
		}
		batch[i] = &wireCall{ctx: cctx, target: [3]string{"/pub/", "c" + strconv.Itoa(i), ""},
			rq: request{method: http.MethodPost, body: []byte("x")}, done: make(chan struct{}, 1)}
	}
	w.pipeline(batch)
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if c := batch[0]; c.err != nil || c.status != 202 {
		t.Errorf("call 0: %d %v, want 202", c.status, c.err)
	}
	for i, c := range batch[1:] {
		if !errors.Is(c.err, os.ErrDeadlineExceeded) {
			t.Errorf("call %d: %v, want the interrupt (a deadline error)", i+1, c.err)
		}
	}
	if len(w.idle) != 0 {
		t.Error("the interrupted connection went back to the pool")
	}
}
