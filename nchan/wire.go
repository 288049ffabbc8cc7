package nchan

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// wire is the Client's own HTTP/1.1 transport for http:// publisher URLs,
// used unless Options.HTTPClient is set. It does what a publisher needs and
// nothing else: one request at a time per keep-alive connection while few
// are in flight, pipelined batches under load (see roundTrip), a pool of
// idle connections (most recently used first), the request written with one
// write from a buffer the connection keeps, the answer parsed in place. It
// starts no goroutine; a cancellable context gets a context.AfterFunc that
// interrupts the connection's I/O. Compared with net/http it saves the two
// goroutines per connection, the per-request channels and most allocations,
// which on a small machine next to nginx is most of the client's CPU time,
// and it tells exactly how far an attempt got (reused connection, request
// written, first answer byte), which the retry rules need.
type wire struct {
	addr   string // host:port to dial
	host   string // the Host header
	dialer net.Dialer

	mu   sync.Mutex
	idle []*wireConn // the most recently used last

	pmu      sync.Mutex
	inFlight int          // requests or batches in flight, up to wirePipeConns
	queue    []*wireCall  // waiting requests, first come first
	piped    atomic.Int64 // requests written in batches of more than one
}

const (
	wireMaxIdle     = 128
	wireIdleTimeout = 60 * time.Second // below nginx's keepalive_timeout (75 s)
	// wireInlineBody is the largest body copied into the request buffer;
	// larger ones go out with writev.
	wireInlineBody = 16 << 10
)

// wireConn is one keep-alive connection.
type wireConn struct {
	nc        net.Conn
	br        *bufio.Reader
	buf       []byte // the request being written
	uses      int    // requests answered on it
	idleSince time.Time
	deadline  bool // a deadline is set on nc
	// closing: the last answer said the server closes the connection after
	// it (Connection: close, or HTTP/1.0 without keep-alive), so it did
	// not carry out requests pipelined behind it.
	closing bool
}

// errLongLine means a status or header line did not fit the read buffer.
var errLongLine = errors.New("nchan: answer header line too long")

// aLongTimeAgo is a deadline that interrupts I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// newWire returns a transport for u, or nil when u needs net/http (https,
// user info in the URL).
func newWire(u *url.URL) *wire {
	if u.Scheme != "http" || u.User != nil {
		return nil
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &wire{
		addr:   addr,
		host:   u.Host,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
	}
}

// get returns an idle connection, or dials a new one.
func (w *wire) get(ctx context.Context) (*wireConn, error) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		wc := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		if time.Since(wc.idleSince) < wireIdleTimeout {
			w.mu.Unlock()
			return wc, nil
		}
		// It and every older one have idled too long.
		old := append([]*wireConn{wc}, w.idle...)
		clear(w.idle)
		w.idle = w.idle[:0]
		w.mu.Unlock()
		for _, o := range old {
			o.nc.Close()
		}
	} else {
		w.mu.Unlock()
	}
	nc, err := w.dialer.DialContext(ctx, "tcp", w.addr)
	if err != nil {
		return nil, err
	}
	return &wireConn{nc: nc, br: bufio.NewReaderSize(nc, 4096), buf: make([]byte, 0, 512)}, nil
}

// put returns a connection to the pool, or closes it if the pool is full.
func (w *wire) put(wc *wireConn) {
	wc.idleSince = time.Now()
	w.mu.Lock()
	if len(w.idle) < wireMaxIdle {
		w.idle = append(w.idle, wc)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	wc.nc.Close()
}

// closeIdle closes the idle connections.
func (w *wire) closeIdle() {
	w.mu.Lock()
	idle := w.idle
	w.idle = nil
	w.mu.Unlock()
	for _, wc := range idle {
		wc.nc.Close()
	}
}

// roundTrip1 sends one request alone on a connection, the target (path and
// query) in pieces to be joined, and reads the answer, reporting in pr how
// far it got. A status with an error means the answer broke off while its
// body was read.
func (w *wire) roundTrip1(ctx context.Context, target [3]string, rq *request, pr *progress) (int, []byte, error) {
	wc, err := w.get(ctx)
	if err != nil {
		return 0, nil, err
	}
	pr.reused = wc.uses > 0

	if d, ok := ctx.Deadline(); ok {
		if err := wc.nc.SetDeadline(d); err != nil {
			wc.nc.Close()
			return 0, nil, err
		}
		wc.deadline = true
	} else if wc.deadline {
		if err := wc.nc.SetDeadline(time.Time{}); err != nil {
			wc.nc.Close()
			return 0, nil, err
		}
		wc.deadline = false
	}
	var stop func() bool
	if ctx.Done() != nil {
		nc := wc.nc
		stop = context.AfterFunc(ctx, func() { _ = nc.SetDeadline(aLongTimeAgo) })
	}

	status, body, keep, err := wc.exchange(target, w.host, rq, pr)
	if stop != nil && !stop() {
		// The context ended: the connection's deadline is spoilt.
		keep = false
		if err != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	} else if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline came before the context's timer said so.
		err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	if keep && err == nil {
		wc.uses++
		w.put(wc)
	} else {
		wc.nc.Close()
	}
	return status, body, err
}

// exchange writes the request and reads the answer; keep reports whether the
// connection may serve another request.
func (wc *wireConn) exchange(target [3]string, host string, rq *request, pr *progress) (status int, body []byte, keep bool, err error) {
	b := appendHead(wc.buf[:0], target, host, rq)
	if len(rq.body) <= wireInlineBody {
		b = append(b, rq.body...)
		_, err = wc.nc.Write(b)
	} else {
		bufs := net.Buffers{b, rq.body}
		_, err = bufs.WriteTo(wc.nc)
	}
	if cap(b) <= 64<<10 {
		wc.buf = b[:0]
	}
	if err != nil {
		// nginx answers some requests (413, 400) before it has read them
		// and closes the connection, which can break the write: the
		// answer may have arrived all the same.
		if _, perr := wc.br.Peek(1); perr != nil {
			return 0, nil, false, err
		}
		pr.firstByte = true
		status, body, _, rerr := wc.readAnswer(rq.method)
		if rerr != nil {
			return 0, nil, false, err
		}
		return status, body, false, nil
	}
	pr.wrote = true

	if _, err := wc.br.Peek(1); err != nil {
		return 0, nil, false, err
	}
	pr.firstByte = true
	return wc.readAnswer(rq.method)
}

// appendHead appends the request line and headers of rq to b.
func appendHead(b []byte, target [3]string, host string, rq *request) []byte {
	b = append(b, rq.method...)
	b = append(b, ' ')
	b = append(b, target[0]...)
	b = append(b, target[1]...)
	b = append(b, target[2]...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	if rq.contentType != "" {
		b = append(b, "Content-Type: "...)
		b = append(b, rq.contentType...)
		b = append(b, "\r\n"...)
	}
	if rq.event != "" {
		b = append(b, "X-EventSource-Event: "...)
		b = append(b, rq.event...)
		b = append(b, "\r\n"...)
	}
	if rq.body != nil || rq.method == http.MethodPost || rq.method == http.MethodPut {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(rq.body)), 10)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// readAnswer reads the status line, the headers and up to maxBody bytes of
// the body, skipping interim (1xx) answers.
func (wc *wireConn) readAnswer(method string) (status int, body []byte, keep bool, err error) {
	for {
		wc.closing = false
		line, err := wc.line()
		if err != nil {
			return 0, nil, false, err
		}
		// "HTTP/1.1 201 Created"
		if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' ||
			len(line) > 12 && line[12] != ' ' {
			return 0, nil, false, fmt.Errorf("nchan: malformed status line %q", clip(string(line)))
		}
		status = 0
		for _, d := range line[9:12] {
			if d < '0' || d > '9' {
				return 0, nil, false, fmt.Errorf("nchan: malformed status line %q", clip(string(line)))
			}
			status = status*10 + int(d-'0')
		}
		http10 := line[7] == '0'
		keep = !http10 // HTTP/1.1 keeps the connection by default
		wc.closing = http10
		length, chunked := int64(-1), false
		for {
			h, err := wc.line()
			if err != nil {
				return status, nil, false, err
			}
			if len(h) == 0 {
				break
			}
			name, value, ok := bytes.Cut(h, []byte{':'})
			if !ok {
				return status, nil, false, fmt.Errorf("nchan: malformed header line %q", clip(string(h)))
			}
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				n, err := strconv.ParseInt(string(value), 10, 64)
				if err != nil || n < 0 || length >= 0 && n != length {
					return status, nil, false, fmt.Errorf("nchan: bad Content-Length %q", clip(string(value)))
				}
				length = n
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				if !bytes.EqualFold(value, []byte("chunked")) {
					return status, nil, false, fmt.Errorf("nchan: unsupported Transfer-Encoding %q", clip(string(value)))
				}
				chunked = true
			case bytes.EqualFold(name, []byte("Connection")):
				for tok := range bytes.SplitSeq(value, []byte{','}) {
					tok = bytes.TrimSpace(tok)
					if bytes.EqualFold(tok, []byte("close")) {
						keep, wc.closing = false, true
					} else if bytes.EqualFold(tok, []byte("keep-alive")) && http10 {
						keep, wc.closing = true, false
					}
				}
			}
		}
		switch {
		case status == http.StatusSwitchingProtocols:
			return status, nil, false, errors.New("nchan: unexpected 101 Switching Protocols")
		case status >= 100 && status < 200:
			continue // interim answer
		case status == http.StatusNoContent || status == http.StatusNotModified || method == http.MethodHead:
			return status, nil, keep, nil
		case chunked:
			body, err = io.ReadAll(io.LimitReader(httputil.NewChunkedReader(wc.br), maxBody+1))
			if err != nil {
				return status, body, false, err
			}
			if len(body) > maxBody {
				return status, body[:maxBody], false, nil
			}
			// Trailers, up to the empty line.
			for {
				t, err := wc.line()
				if err != nil {
					return status, body, false, err
				}
				if len(t) == 0 {
					return status, body, keep, nil
				}
			}
		case length >= 0:
			body = make([]byte, min(length, maxBody))
			if _, err := io.ReadFull(wc.br, body); err != nil {
				return status, nil, false, err
			}
			if rest := length - int64(len(body)); rest > 0 {
				if rest > maxBody {
					return status, body, false, nil
				}
				if _, err := wc.br.Discard(int(rest)); err != nil {
					return status, body, false, nil
				}
			}
			return status, body, keep, nil
		default: // the body ends with the connection
			body, err = io.ReadAll(io.LimitReader(wc.br, maxBody))
			return status, body, false, err
		}
	}
}

// line reads one header line without its CRLF (or LF).
func (wc *wireConn) line() ([]byte, error) {
	l, err := wc.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errLongLine
	}
	if err != nil {
		if err == io.EOF && len(l) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	l = l[:len(l)-1]
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	return l, nil
}

// Pipelining. While fewer than wirePipeConns requests are in flight, each
// goes alone on a connection of its own (roundTrip1). The ones that come
// when wirePipeConns are in flight wait in a queue; each request that ends
// hands its slot to the first one waiting, which takes up to wirePipeDepth
// waiting requests with it, writes them in one write on one connection and
// reads their answers in order (HTTP/1.1 pipelining, which nginx answers in
// order), handing each waiting caller its answer as soon as it is read.
// Under load that cuts the write and read system calls per request, most
// of the client's CPU time, and still starts no goroutine.
//
// Retry rules for a pipelined batch: requests behind an answer that says
// the server closes the connection (Connection: close: nginx's
// keepalive_requests, 413, 400) were not carried out and count as not
// written, so they are sent again; requests that were written and lost
// their answer when the connection broke count as a POST on a fresh
// connection does (maybe carried out, not sent again) unless no answer
// byte at all came back on a reused connection (nginx closed it idle).
// A caller whose context ends while its request is in a batch leaves at
// once; its answer is read and dropped, so the others are not disturbed.
// The batch's I/O is interrupted only when no caller waits for an answer
// any more (each has its answer or has left), and its deadline is the
// latest of theirs. The leader returns when its batch ends: under load its
// call can take as long as the batch it carries.
const (
	wirePipeConns = 8  // requests (or batches) in flight before the queue
	wirePipeDepth = 16 // requests written together at most
)

// errNotCarriedOut is a pipelined request's error when the server closed
// the connection after an earlier answer that said so.
var errNotCarriedOut = fmt.Errorf("nchan: the server closed the connection before this pipelined request: %w", io.EOF)

// wireCall is a request waiting for, or in, a pipelined batch.
type wireCall struct {
	ctx    context.Context
	target [3]string
	rq     request       // a copy, so that the caller's does not escape
	done   chan struct{} // signalled once: answered, or lead
	end    int           // where its bytes end in the batch

	// Under wire.pmu.
	taken bool // out of the queue: in a batch, or leading
	lead  bool // leads the next batch

	settled atomic.Bool // answered, or its context ended (in pipeline)

	// Set before done is signalled.
	status int
	body   []byte
	err    error
	pr     progress
}

// roundTrip sends one request and reads its answer (see roundTrip1),
// alone on a connection or, under load, pipelined with others.
func (w *wire) roundTrip(ctx context.Context, target [3]string, rq *request, pr *progress) (int, []byte, error) {
	w.pmu.Lock()
	if w.inFlight < wirePipeConns {
		w.inFlight++
		w.pmu.Unlock()
		status, body, err := w.roundTrip1(ctx, target, rq, pr)
		w.handOff()
		return status, body, err
	}
	c := &wireCall{ctx: ctx, target: target, rq: *rq, done: make(chan struct{}, 1)}
	w.queue = append(w.queue, c)
	w.pmu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		w.pmu.Lock()
		if !c.taken {
			i := slices.Index(w.queue, c)
			w.queue = slices.Delete(w.queue, i, i+1)
			w.pmu.Unlock()
			return 0, nil, ctx.Err()
		}
		lead := c.lead
		w.pmu.Unlock()
		if !lead {
			// In a batch: its answer will be read and dropped.
			pr.wrote = true
			return 0, nil, ctx.Err()
		}
		<-c.done
	}
	if c.lead {
		w.lead(c)
	}
	*pr = c.pr
	return c.status, c.body, c.err
}

// handOff passes an ended request's slot to the first waiting one.
func (w *wire) handOff() {
	w.pmu.Lock()
	if len(w.queue) == 0 {
		w.inFlight--
		w.pmu.Unlock()
		return
	}
	next := w.queue[0]
	w.queue[0] = nil
	w.queue = w.queue[1:]
	if len(w.queue) == 0 {
		w.queue = w.queue[:0:0]
	}
	next.taken, next.lead = true, true
	w.pmu.Unlock()
	next.done <- struct{}{}
}

// lead sends first with up to wirePipeDepth-1 waiting requests, then hands
// the slot on.
func (w *wire) lead(first *wireCall) {
	w.pmu.Lock()
	n := min(len(w.queue), wirePipeDepth-1)
	batch := make([]*wireCall, 0, n+1)
	batch = append(batch, first)
	for _, c := range w.queue[:n] {
		c.taken = true
		batch = append(batch, c)
	}
	rest := copy(w.queue, w.queue[n:])
	clear(w.queue[rest:])
	w.queue = w.queue[:rest]
	w.pmu.Unlock()

	if len(batch) == 1 {
		first.status, first.body, first.err = w.roundTrip1(first.ctx, first.target, &first.rq, &first.pr)
	} else {
		w.pipeline(batch)
	}
	w.handOff()
}

// pipeline writes the batch in one write on one connection and reads the
// answers in order, signalling each call but the first (the leader's).
func (w *wire) pipeline(batch []*wireCall) {
	// live counts the callers still waiting for their answer; when none
	// is left (answered, or their context ended), the I/O is interrupted.
	// After the last answer there is nothing left to interrupt.
	var (
		live        atomic.Int32
		interrupted atomic.Bool
		nc          net.Conn
	)
	live.Store(int32(len(batch)))
	settle := func(c *wireCall, last bool) {
		if c.settled.CompareAndSwap(false, true) && live.Add(-1) == 0 && !last && nc != nil {
			interrupted.Store(true)
			_ = nc.SetDeadline(aLongTimeAgo)
		}
	}
	answered := func(c *wireCall) {
		if c != batch[0] {
			c.done <- struct{}{}
		}
		settle(c, c == batch[len(batch)-1])
	}
	// The dial serves them all: no caller's context cuts it short.
	wc, err := w.get(context.Background())
	if err != nil {
		for _, c := range batch {
			c.err = err
			answered(c)
		}
		return
	}
	reused := wc.uses > 0

	// The latest deadline, none if a call has none.
	var deadline time.Time
	for _, c := range batch {
		d, ok := c.ctx.Deadline()
		if !ok {
			deadline = time.Time{}
			break
		}
		if d.After(deadline) {
			deadline = d
		}
	}
	if !deadline.IsZero() || wc.deadline {
		if err := wc.nc.SetDeadline(deadline); err != nil {
			wc.nc.Close()
			for _, c := range batch {
				c.err = err
				answered(c)
			}
			return
		}
		wc.deadline = !deadline.IsZero()
	}
	nc = wc.nc
	stops := make([]func() bool, 0, len(batch))
	for _, c := range batch {
		if c.ctx.Done() != nil {
			stops = append(stops, context.AfterFunc(c.ctx, func() { settle(c, false) }))
		}
	}

	b := wc.buf[:0]
	for _, c := range batch {
		b = appendHead(b, c.target, w.host, &c.rq)
		b = append(b, c.rq.body...)
		c.end = len(b)
	}
	w.piped.Add(int64(len(batch)))
	written, werr := wc.nc.Write(b)
	if cap(b) <= 64<<10 {
		wc.buf = b[:0]
	}

	var (
		closed    bool  // an answer said the connection closes after it
		broken    error // the connection can give no more answers
		firstByte bool  // an answer started
		uses      int
	)
	for _, c := range batch {
		c.pr.reused = reused
		c.pr.wrote = c.end <= written
		switch {
		case closed:
			c.pr.wrote = false
			c.err = errNotCarriedOut
		case !c.pr.wrote:
			c.err = werr
		case broken != nil:
			c.pr.firstByte = firstByte
			c.err = broken
		default:
			if _, err := wc.br.Peek(1); err != nil {
				broken = err
				if firstByte {
					broken = fmt.Errorf("nchan: pipelined request's answer lost, it may or may not have been carried out: %w", err)
				}
				c.pr.firstByte = firstByte
				c.err = broken
				break
			}
			firstByte, c.pr.firstByte = true, true
			status, body, keep, err := wc.readAnswer(c.rq.method)
			c.status, c.body, c.err = status, body, err
			switch {
			case err != nil:
				broken = fmt.Errorf("nchan: connection broke during an earlier pipelined answer, this request may or may not have been carried out: %w", err)
			case !keep && wc.closing:
				closed = true
				uses++
			case !keep:
				broken = errors.New("nchan: connection given up after an earlier pipelined answer, this request may or may not have been carried out")
				uses++
			default:
				uses++
			}
		}
		if c.err != nil && errors.Is(c.err, os.ErrDeadlineExceeded) && deadlinePassed(c.ctx) {
			c.err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, c.err)
		}
		answered(c)
	}

	keep := werr == nil && !closed && broken == nil
	for _, stop := range stops {
		if !stop() {
			keep = false // the deadline may be spoilt
		}
	}
	if interrupted.Load() {
		keep = false
	}
	if keep {
		wc.uses += uses
		w.put(wc)
	} else {
		wc.nc.Close()
	}
}
