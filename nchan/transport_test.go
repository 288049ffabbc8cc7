package nchan

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/uuid"

	"github.com/sessionpush/sessionpush/relay"
)

// These tests are about the Client's transport: its own (fasthttp over the
// Client's connection pool) unless Options.HTTPClient is set. Those about
// the retry rules run through both, with bothPaths.

// netHTTPTransport is a net/http Transport with the settings of the
// Client's own transport, for Options.HTTPClient in tests and benchmarks.
func netHTTPTransport() *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        128,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
	}
}

// bothPaths runs f as two subtests, with options for the Client's own
// transport and for a net/http client (Options.HTTPClient) of the same
// settings.
func bothPaths(t *testing.T, f func(t *testing.T, opts Options)) {
	t.Run("transport", func(t *testing.T) { f(t, Options{}) })
	t.Run("nethttp", func(t *testing.T) {
		tr := netHTTPTransport()
		t.Cleanup(tr.CloseIdleConnections)
		f(t, Options{HTTPClient: &http.Client{Transport: tr}})
	})
}

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
	ln       net.Listener
	wg       sync.WaitGroup
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
func TestTransportKeepAliveLimit(t *testing.T) {
	bothPaths(t, testKeepAliveLimit)
}

func testKeepAliveLimit(t *testing.T, opts Options) {
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
	c, err := New(srv.URL+"/publish?channel={channel}", opts)
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
func TestTransportDroppedKeepAliveRetried(t *testing.T) {
	bothPaths(t, testDroppedKeepAliveRetried)
}

func testDroppedKeepAliveRetried(t *testing.T, opts Options) {
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
	c, err := New(srv.URL+"/pub/{channel}", opts)
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
func TestTransportFreshConnectionPostNotRepeated(t *testing.T) {
	bothPaths(t, testFreshConnectionPostNotRepeated)
}

func testFreshConnectionPostNotRepeated(t *testing.T, opts Options) {
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		return false
	})
	c, err := New(srv.URL+"/pub/{channel}", opts)
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
func TestTransportEarlyAnswerClosesConnection(t *testing.T) {
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
func TestTransportContextEndsCall(t *testing.T) {
	bothPaths(t, testContextEndsCall)
}

func testContextEndsCall(t *testing.T, opts Options) {
	got := make(chan struct{}, 10)
	release := make(chan struct{})
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		got <- struct{}{}
		<-release
		return false
	})
	t.Cleanup(func() { close(release) }) // before the server's cleanup
	c, err := New(srv.URL+"/pub/{channel}", opts)
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

// Answers in the forms other servers use: chunked, HTTP/1.0, no length; and
// malformed ones, refused (header lines ending in a bare LF among them: HTTP/1.1
// wants CRLF).
func TestTransportAnswerForms(t *testing.T) {
	forms := map[string]string{
		"chunked": "HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(infoBody), infoBody),
		"http10":   "HTTP/1.0 202 Accepted\r\nContent-Length: " + strconv.Itoa(len(infoBody)) + "\r\n\r\n" + infoBody,
		"unsized":  "HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n" + infoBody,
		"interim":  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: " + strconv.Itoa(len(infoBody)) + "\r\n\r\n" + infoBody,
		"bad-lf":   "HTTP/1.1 202 Accepted\nContent-Length: " + strconv.Itoa(len(infoBody)) + "\n\n" + infoBody,
		"garbage":  "SMTP ready\r\n\r\n",
		"bad-size": "HTTP/1.1 202 Accepted\r\nContent-Length: x\r\n\r\n",
		"bad-101":  "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
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

// What the transport sends: the request target from the template (path or
// query), Host, Content-Length for every method but GET (0 for an empty PUT,
// POST or DELETE), nothing else beyond the message's headers.
func TestTransportRequestShape(t *testing.T) {
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
			if hasLength != (w.method != "GET") {
				t.Errorf("%s %s: Content-Length present %v", tc.tmpl, w.method, hasLength)
			}
			if w.method == "POST" && (s.header.Get("Content-Type") != "text/plain" || s.header.Get("X-EventSource-Event") != "e" || len(s.header) != 3) {
				t.Errorf("POST headers %v", s.header)
			}
		}
	}
}

// Every http and https URL goes through the Client's own transport, unless
// Options.HTTPClient is set: the address it dials (default port for the
// scheme), the Host header, TLS for https, Basic authentication for user
// info.
func TestTransportForEveryURL(t *testing.T) {
	for _, tc := range []struct {
		tmpl, addr, host, serverName, auth string
	}{
		{"http://127.0.0.1:1/pub/{channel}", "127.0.0.1:1", "127.0.0.1:1", "", ""},
		{"http://localhost/pub/{channel}", "localhost:80", "localhost", "", ""},
		{"https://127.0.0.1:1/pub/{channel}", "127.0.0.1:1", "127.0.0.1:1", "127.0.0.1", ""},
		{"https://example.com/pub/{channel}", "example.com:443", "example.com", "example.com", ""},
		{"http://u:p@127.0.0.1:1/pub/{channel}", "127.0.0.1:1", "127.0.0.1:1", "", "Basic dTpw"},
		{"http://[::1]:8080/pub/{channel}", "[::1]:8080", "[::1]:8080", "", ""},
		{"http://[::1]/pub/{channel}", "[::1]:80", "[::1]", "", ""},
	} {
		c, err := New(tc.tmpl, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if c.tr == nil || c.hc != nil {
			t.Fatalf("%s: not through the Client's own transport", tc.tmpl)
		}
		serverName := ""
		if c.tr.tlsConfig != nil {
			serverName = c.tr.tlsConfig.ServerName
		}
		if c.tr.addr != tc.addr || c.tr.host != tc.host || serverName != tc.serverName || (c.tr.tlsConfig != nil) != (tc.serverName != "") || c.tr.auth != tc.auth {
			t.Errorf("%s: dial %q Host %q TLS %q auth %q; want %q %q %q %q", tc.tmpl, c.tr.addr, c.tr.host, serverName, c.tr.auth, tc.addr, tc.host, tc.serverName, tc.auth)
		}
	}
	c, _ := New("https://127.0.0.1:1/pub/{channel}", Options{HTTPClient: &http.Client{}})
	if c.tr != nil || c.hc == nil {
		t.Error("Options.HTTPClient set: not through net/http")
	}
}

// An https publisher: TLS through the Client's own transport, its
// connection kept alive; a server whose certificate is not trusted is
// refused.
func TestTransportHTTPS(t *testing.T) {
	var conns atomic.Int64
	var auth atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusAccepted)
		}
		io.WriteString(w, infoBody)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ctx := ctxTimeout(t, 10*time.Second)

	untrusted, err := New(srv.URL+"/pub/{channel}", Options{MaxRetryTime: -1})
	if err != nil {
		t.Fatal(err)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := untrusted.Info(ctx, "s"); !errors.As(err, &unknown) {
		t.Errorf("Info from a server of an unknown authority: %v, want x509.UnknownAuthorityError", err)
	}

	u, _ := url.Parse(srv.URL)
	u.User = url.UserPassword("pub", "secret")
	c, err := New(u.String()+"/pub/{channel}", Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	c.tr.tlsConfig.RootCAs = roots
	defer c.CloseIdleConnections()
	if _, err := c.Info(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if r, err := c.Publish(ctx, "s", relay.Message{Body: []byte("x")}); err != nil || r.ID != "1795742138:0" {
			t.Fatalf("Publish over TLS: %+v, %v", r, err)
		}
	}
	if n := conns.Load(); n != 2 { // the refused one, and one kept alive
		t.Errorf("%d TLS connections, want 2", n)
	}
	if got, want := auth.Load(), "Basic cHViOnNlY3JldA=="; got != want {
		t.Errorf("Authorization %q, want %q", got, want)
	}
}

// An answer with both Content-Length and Transfer-Encoding, which a server
// and a client may frame differently (the means of response splitting): it
// is read as chunked (RFC 9112 §6.3: Transfer-Encoding overrides), and its
// connection is not used again.
func TestTransportLengthAndChunkedNotReused(t *testing.T) {
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(infoBody), infoBody)
	for name, header := range map[string]string{
		"length first":   "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
		"encoding first": "Transfer-Encoding: chunked\r\ncontent-length : 5\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
				io.Copy(io.Discard, r.Body)
				io.WriteString(w, "HTTP/1.1 202 Accepted\r\n"+header+"\r\n"+chunked)
				return true // the server would go on
			})
			c, err := New(srv.URL+"/pub/{channel}", Options{})
			if err != nil {
				t.Fatal(err)
			}
			c.markOpen("a")
			ctx := ctxTimeout(t, 10*time.Second)
			for range 3 {
				if r, err := c.Publish(ctx, "a", relay.Message{Body: []byte("x")}); err != nil || r.ID != "1795742138:0" {
					t.Fatalf("Publish: %+v, %v", r, err)
				}
			}
			if n := srv.conns.Load(); n != 3 {
				t.Errorf("%d connections for 3 publishes, want 3 (none reused)", n)
			}
		})
	}
	// The same answer with Content-Length alone is kept alive.
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		writeAnswer(w, 202, "", infoBody)
		return true
	})
	c, _ := New(srv.URL+"/pub/{channel}", Options{})
	c.markOpen("a")
	for range 3 {
		if _, err := c.Publish(ctxTimeout(t, 10*time.Second), "a", relay.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections for 3 publishes, want 1", n)
	}
}

// checkFraming, on answers that arrive whole or a byte at a time.
func TestCheckFraming(t *testing.T) {
	for _, tc := range []struct {
		answer    string
		ambiguous bool
		bareLF    bool
	}{
		{"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok", false, false},
		{"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, false},
		{"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\nTRANSFER-ENCODING: chunked\r\n\r\n", true, false},
		{"HTTP/1.1 202 Accepted\r\nTransfer-Encoding : chunked\r\nContent-Length\t: 2\r\n\r\n", true, false},
		{"HTTP/1.1 202 Accepted\r\nContent-Type: x\r\nTransfer-Encoding-X: chunked\r\nContent-Length: 2\r\n\r\n", false, false},
		{"HTTP/1.1 202 Accepted\r\nContent-Length-ish\r\n\r\n", false, false},
		{"\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", true, false},
		// An interim answer's headers do not count; the final one's do.
		{"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n", false, false},
		{"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", true, false},
		// The body may hold anything.
		{"HTTP/1.1 202 Accepted\r\nContent-Length: 3\r\n\r\na\nb", false, false},
		{"HTTP/1.1 202 Accepted\nContent-Length: 2\n\nok", false, true},
		{"HTTP/1.1 202 Accepted\r\nContent-Length: 2\n\r\nok", false, true},
		// Broken off: left to fasthttp.
		{"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n", false, false},
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.answer)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			br := bufio.NewReaderSize(r, connBufferSize)
			ambiguous, err := checkFraming(br)
			if ambiguous != tc.ambiguous || errors.Is(err, errBareLF) != tc.bareLF || err != nil && !tc.bareLF {
				t.Errorf("%q (a byte at a time %v): ambiguous %v, %v; want %v, bare LF %v", tc.answer, oneByte, ambiguous, err, tc.ambiguous, tc.bareLF)
			}
			if rest, _ := io.ReadAll(br); string(rest) != tc.answer {
				t.Errorf("%q: checkFraming consumed the answer", tc.answer)
			}
		}
	}
}

// An answer whose body is larger than the Client reads gives its status
// and the start of its body; the connection is not used again.
func TestTransportLargeAnswer(t *testing.T) {
	big := strings.Repeat("x", maxBody+1)
	srv := newRawServer(t, func(r *http.Request, nth int, w io.Writer) bool {
		io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodGet {
			writeAnswer(w, 502, "", big)
			return true
		}
		writeAnswer(w, 202, "", infoBody)
		return true
	})
	c, _ := New(srv.URL+"/pub/{channel}", Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	var e *Error
	if _, err := c.Info(ctx, "a"); !errors.As(err, &e) || e.Status != 502 {
		t.Fatalf("Info answered 502 with a large body: %v, want a 502 *Error", err)
	}
	c.markOpen("a")
	if _, err := c.Publish(ctx, "a", relay.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if n := srv.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestRequestTargetEscaped: the request target is escaped by construction.
// A template whose path and query hold a space and non-ASCII characters
// gives a valid, percent-encoded request line, read here off a raw TCP
// connection, through the client's own transport and through a caller's
// *http.Client alike; and net/http parses the request.
func TestRequestTargetEscaped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 8)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					lines <- line
					r, err := http.ReadRequest(bufio.NewReader(io.MultiReader(strings.NewReader(line), br)))
					if err != nil {
						t.Errorf("request after %q: %v", line, err)
						return
					}
					io.Copy(io.Discard, r.Body)
					writeAnswer(conn, 202, "", infoBody)
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })

	id := uuid.NewString()
	for _, custom := range []bool{false, true} {
		for _, tc := range []struct{ tmpl, target string }{
			{"/pub lish/é/{channel}", "/pub%20lish/%C3%A9/" + id},
			{"/pub lish/é/{channel}?x=a b", "/pub%20lish/%C3%A9/" + id + "?x=a%20b"},
			{"/pub lish/é?x=é b&channel={channel}", "/pub%20lish/%C3%A9?x=%C3%A9%20b&channel=" + id},
			{"/already%20escaped/{channel}?q=%C3%A9", "/already%20escaped/" + id + "?q=%C3%A9"},
		} {
			opts := Options{}
			if custom {
				tr := &http.Transport{}
				t.Cleanup(tr.CloseIdleConnections)
				opts.HTTPClient = &http.Client{Transport: tr}
			}
			c, err := New("http://"+ln.Addr().String()+tc.tmpl, opts)
			if err != nil {
				t.Fatal(err)
			}
			c.markOpen(id)
			if _, err := c.Publish(ctxTimeout(t, 10*time.Second), id, relay.Message{Body: []byte("x")}); err != nil {
				t.Fatalf("%s: %v", tc.tmpl, err)
			}
			c.CloseIdleConnections()
			if got, want := <-lines, "POST "+tc.target+" HTTP/1.1\r\n"; got != want {
				t.Errorf("%s (custom client %v): request line %q, want %q", tc.tmpl, custom, got, want)
			}
		}
	}
}
