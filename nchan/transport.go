package nchan

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// transport is the Client's HTTP/1.1 transport, used unless
// Options.HTTPClient is set: fasthttp's Request and Response write the
// requests and parse the answers, over a small pool of keep-alive
// connections (plain TCP, or TLS for https URLs) that this file keeps.
//
// It keeps its own pool rather than a fasthttp.HostClient for three
// reasons. It starts no goroutine (HostClient cleans its idle connections
// from one of its own, which would outlive a Client that is dropped); an
// idle connection's age is checked when it is taken. It tells exactly how
// far an attempt got (a reused connection, the whole request written, the
// first answer byte), which the retry rules need and HostClient does not
// report; so nothing is retried here, the Client's retry loop decides. And a
// call is bounded by its context: the dial by DialContext, the exchange by
// the context's deadline set on the connection and by a context.AfterFunc
// that interrupts the connection's I/O when the context is cancelled.
//
// One request at a time goes on a connection, the most recently used idle
// connection first. The request target is written as the Client built it,
// already escaped; fasthttp neither parses nor normalizes it.
type transport struct {
	addr      string      // host:port to dial
	host      string      // the Host header
	auth      string      // the Authorization header (user info in the URL), or ""
	tlsConfig *tls.Config // nil: plain TCP
	dialer    net.Dialer

	mu   sync.Mutex
	idle []*conn // the most recently used last
}

const (
	maxIdleConns    = 128
	idleConnTimeout = 60 * time.Second // below nginx's keepalive_timeout (75 s)
	connBufferSize  = 4096             // the read and write buffers of a connection
)

// conn is one keep-alive connection with the fasthttp objects it reuses.
type conn struct {
	nc        net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	req       fasthttp.Request
	resp      fasthttp.Response
	target    []byte // the request target being written
	uses      int    // requests answered on it
	idleSince time.Time
	deadline  bool // a deadline is set on nc
}

// errBareLF means an answer's header lines end with LF alone, which
// HTTP/1.1 does not allow (RFC 9112 §2.2 lets a recipient refuse it).
var errBareLF = errors.New("nchan: malformed answer: header line ends with a bare LF")

// errSwitchingProtocols means the server answered 101, which a publisher
// request never asks for.
var errSwitchingProtocols = errors.New("nchan: unexpected 101 Switching Protocols")

// aLongTimeAgo is a deadline that interrupts I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// newTransport returns a transport for the publisher URL u (http or https).
func newTransport(u *url.URL) *transport {
	t := &transport{
		addr:   u.Host,
		host:   u.Host,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
		t.tlsConfig = &tls.Config{ServerName: u.Hostname()}
	}
	if u.Port() == "" {
		t.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.User != nil {
		// What net/http sends for user info: Basic authentication.
		pass, _ := u.User.Password()
		t.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
	}
	return t
}

// get returns an idle connection, or dials a new one.
func (t *transport) get(ctx context.Context) (*conn, error) {
	t.mu.Lock()
	if n := len(t.idle); n > 0 {
		c := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		if time.Since(c.idleSince) < idleConnTimeout {
			t.mu.Unlock()
			return c, nil
		}
		// It and every older one have idled too long.
		old := append([]*conn{c}, t.idle...)
		clear(t.idle)
		t.idle = t.idle[:0]
		t.mu.Unlock()
		for _, o := range old {
			o.nc.Close()
		}
	} else {
		t.mu.Unlock()
	}
	nc, err := t.dialer.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	if t.tlsConfig != nil {
		tc := tls.Client(nc, t.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	return &conn{
		nc: nc,
		br: bufio.NewReaderSize(nc, connBufferSize),
		bw: bufio.NewWriterSize(nc, connBufferSize),
	}, nil
}

// put returns a connection to the pool, or closes it if the pool is full.
func (t *transport) put(c *conn) {
	c.idleSince = time.Now()
	t.mu.Lock()
	if len(t.idle) < maxIdleConns {
		t.idle = append(t.idle, c)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	c.nc.Close()
}

// closeIdle closes the idle connections.
func (t *transport) closeIdle() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, c := range idle {
		c.nc.Close()
	}
}

// roundTrip sends one request with the target (path and query, in pieces to
// be joined) and reads the answer, reporting in pr how far it got. A status
// with an error means the answer broke off while its body was read.
func (t *transport) roundTrip(ctx context.Context, target [3]string, rq *request, pr *progress) (int, []byte, error) {
	c, err := t.get(ctx)
	if err != nil {
		return 0, nil, err
	}
	pr.reused = c.uses > 0

	if d, ok := ctx.Deadline(); ok {
		if err := c.nc.SetDeadline(d); err != nil {
			c.nc.Close()
			return 0, nil, err
		}
		c.deadline = true
	} else if c.deadline {
		if err := c.nc.SetDeadline(time.Time{}); err != nil {
			c.nc.Close()
			return 0, nil, err
		}
		c.deadline = false
	}
	var stop func() bool
	if ctx.Done() != nil {
		nc := c.nc
		stop = context.AfterFunc(ctx, func() { _ = nc.SetDeadline(aLongTimeAgo) })
	}

	status, body, keep, err := c.exchange(t, target, rq, pr)
	if stop != nil && !stop() {
		// The context ended: the connection's deadline is spoilt.
		keep = false
		if err != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	} else if err != nil && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout)) {
		// The deadline came before the context's timer said so.
		err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	if keep && err == nil {
		c.uses++
		t.put(c)
	} else {
		c.nc.Close()
	}
	return status, body, err
}

// exchange writes the request and reads the answer; keep reports whether the
// connection may serve another request.
func (c *conn) exchange(t *transport, target [3]string, rq *request, pr *progress) (status int, body []byte, keep bool, err error) {
	req := &c.req
	req.Reset()
	req.Header.DisableNormalizing()
	req.Header.SetNoDefaultContentType(true) // none unless the message has one
	req.Header.SetMethod(rq.method)
	c.target = append(append(append(c.target[:0], target[0]...), target[1]...), target[2]...)
	req.SetRequestURIBytes(c.target) // written as is: it is escaped already
	req.Header.SetHost(t.host)
	if rq.contentType != "" {
		req.Header.SetContentType(rq.contentType)
	}
	if rq.event != "" {
		req.Header.Set("X-EventSource-Event", rq.event)
	}
	if t.auth != "" {
		req.Header.Set("Authorization", t.auth)
	}
	// Content-Length goes with every method but GET, 0 for no body.
	req.SetBodyRaw(rq.body)
	err = req.Write(c.bw)
	if err == nil {
		err = c.bw.Flush()
	}
	req.SetBodyRaw(nil) // the caller's body is not kept
	if err != nil {
		// nginx answers some requests (413, 400) before it has read them
		// and closes the connection, which can break the write: the
		// answer may have arrived all the same.
		if _, perr := c.br.Peek(1); perr != nil {
			return 0, nil, false, err
		}
		pr.firstByte = true
		status, body, _, rerr := c.readAnswer()
		if rerr != nil {
			return 0, nil, false, err
		}
		return status, body, false, nil
	}
	pr.wrote = true

	if _, err := c.br.Peek(1); err != nil {
		return 0, nil, false, err
	}
	pr.firstByte = true
	return c.readAnswer()
}

// readAnswer reads the answer's header (after any interim 1xx answers) and
// up to maxBody bytes of its body with fasthttp. The Client never sends
// HEAD, so only the status tells an answer without a body.
func (c *conn) readAnswer() (status int, body []byte, keep bool, err error) {
	ambiguous, err := checkFraming(c.br)
	if err != nil {
		return 0, nil, false, err
	}
	resp := &c.resp
	resp.Reset()
	resp.SkipBody = true // the header first, so that a broken body keeps its status
	if err := resp.ReadLimitBody(c.br, maxBody); err != nil {
		return 0, nil, false, err
	}
	status = resp.StatusCode()
	keep = !resp.ConnectionClose() && !ambiguous
	switch {
	case status == http.StatusSwitchingProtocols:
		return status, nil, false, errSwitchingProtocols
	case status == http.StatusNoContent || status == http.StatusNotModified:
		return status, nil, keep, nil
	}
	resp.SkipBody = false
	err = resp.ReadBody(c.br, maxBody)
	if err == nil && resp.Header.ContentLength() == -1 { // chunked: the trailer
		err = resp.Header.ReadTrailer(c.br)
	}
	if b := resp.Body(); len(b) > 0 {
		body = append([]byte(nil), b[:min(len(b), maxBody)]...)
	}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		// More than the Client reads: what it got, and a new connection
		// next time.
		return status, body, false, nil
	case err != nil:
		return status, body, false, err
	}
	return status, body, keep, nil
}

// checkFraming looks at the header blocks of the answer that starts in br
// (interim 1xx answers and the final one) before fasthttp parses them, and
// reads nothing. A header line that ends with a bare LF is refused at once
// (fasthttp would wait for a CRLF that may never come). ambiguous reports a
// final answer with both Content-Length and Transfer-Encoding: fasthttp reads
// its body as chunked, as RFC 9112 §6.3 says, but the connection is not
// reused, since the server and the Client may disagree on where the answer
// ends. A header larger than the buffer is left to fasthttp to refuse.
func checkFraming(br *bufio.Reader) (ambiguous bool, err error) {
	b, _ := br.Peek(br.Buffered())
	start := 0 // of the current header block
	line := 0  // start of the current line
	var hasLength, hasEncoding bool
	for i := 0; ; i++ {
		if i == len(b) {
			if len(b) >= br.Size() {
				return false, nil
			}
			if _, err := br.Peek(len(b) + 1); err != nil {
				return false, nil // fasthttp reports the broken answer
			}
			b, _ = br.Peek(br.Buffered())
		}
		if b[i] != '\n' {
			continue
		}
		if i == 0 || b[i-1] != '\r' {
			return false, errBareLF
		}
		l := b[line : i-1]
		line = i + 1
		switch {
		case len(l) == 0 && i-1 == start: // an empty line before the status line
			start = line
		case len(l) == 0: // the end of a block
			if !interim(b[start:i]) {
				return hasLength && hasEncoding, nil
			}
			start, hasLength, hasEncoding = line, false, false
		case l[0]|0x20 == 'c':
			hasLength = hasLength || headerName(l, "content-length")
		case l[0]|0x20 == 't':
			hasEncoding = hasEncoding || headerName(l, "transfer-encoding")
		}
	}
}

// headerName reports whether the header line l has the name lower, in any
// case, with optional blanks before its colon.
func headerName(l []byte, lower string) bool {
	if len(l) <= len(lower) || !bytes.EqualFold(l[:len(lower)], []byte(lower)) {
		return false
	}
	rest := bytes.TrimLeft(l[len(lower):], " \t")
	return len(rest) > 0 && rest[0] == ':'
}

// interim reports whether a header block is an interim answer (1xx but
// 101), which another block follows.
func interim(block []byte) bool {
	// "HTTP/1.1 100 Continue"
	return len(block) >= 12 && bytes.HasPrefix(block, []byte("HTTP/1.")) && block[8] == ' ' &&
		block[9] == '1' && !(block[10] == '0' && block[11] == '1')
}
