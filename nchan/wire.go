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
	"strconv"
	"sync"
	"time"
)

// wire is the Client's own HTTP/1.1 transport for http:// publisher URLs,
// used unless Options.HTTPClient is set. It does what a publisher needs and
// nothing else: one request at a time per keep-alive connection, a pool of
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

// roundTrip sends one request with the target (path and query, in pieces to
// be joined) and reads the answer, reporting in pr how far it got. A status
// with an error means the answer broke off while its body was read.
func (w *wire) roundTrip(ctx context.Context, target [3]string, rq *request, pr *progress) (int, []byte, error) {
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
	b := wc.buf[:0]
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
	b = append(b, "\r\n"...)
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

// readAnswer reads the status line, the headers and up to maxBody bytes of
// the body, skipping interim (1xx) answers.
func (wc *wireConn) readAnswer(method string) (status int, body []byte, keep bool, err error) {
	for {
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
						keep = false
					} else if bytes.EqualFold(tok, []byte("keep-alive")) && http10 {
						keep = true
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
