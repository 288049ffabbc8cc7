package nchan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// maxBody bounds what is read of an answer: info bodies are ~100 bytes,
// nginx error pages a few hundred.
const maxBody = 64 << 10

// firstRetryWait is the wait before the first retry; it doubles with each.
const firstRetryWait = 10 * time.Millisecond

// lastTryMargin is how long before the retry limit the last attempt starts.
const lastTryMargin = 5 * time.Millisecond

// request is one call to the publisher endpoint.
type request struct {
	op, channel string
	method      string
	body        []byte // nil: no body (Content-Length: 0 for PUT and POST)
	contentType string
	event       string
}

// result is the final answer to a request.
type result struct {
	status int
	body   []byte
	// maybeDone: an earlier attempt was sent and lost its answer, so the
	// server may have carried it out (a DELETE then answers 404).
	maybeDone bool
}

// do sends rq, retrying 503 answers and connection errors with exponential
// backoff and jitter until the context's deadline or MaxRetryTime. Every
// answer that comes back is returned, whatever its status, except 503s
// that are retried; when retrying ends, the *Error carries the last status.
func (c *Client) do(ctx context.Context, rq request) (result, error) {
	var (
		res        result
		lastStatus int
		lastErr    error
	)
	giveUp, byCtx := c.retryLimit(ctx)
	for attempt := 1; ; attempt++ {
		var pr progress
		status, body, err := c.attempt(ctx, &rq, &pr)
		switch {
		case err == nil && status != http.StatusServiceUnavailable:
			res.status, res.body = status, body
			return res, nil
		case err == nil:
			lastStatus, lastErr = status, nil
		case ctx.Err() != nil || deadlinePassed(ctx):
			if lastErr == nil {
				lastErr = err
			}
			return res, ctxError(ctx, rq, lastStatus, lastErr)
		case !retryable(err, rq.method, &pr):
			if status == 0 {
				status = lastStatus
			}
			return res, &Error{Op: rq.op, Channel: rq.channel, Status: status, Err: err}
		default:
			lastErr = err
			if pr.wrote {
				res.maybeDone = true
			}
		}

		wait := c.backoff(attempt)
		if remaining := time.Until(giveUp); wait > remaining && remaining >= 2*lastTryMargin {
			wait = remaining - lastTryMargin // one last attempt just before the limit
		}
		if c.maxRetryTime < 0 || time.Now().Add(wait).After(giveUp) {
			e := &Error{Op: rq.op, Channel: rq.channel, Status: lastStatus}
			switch {
			case c.maxRetryTime < 0:
				e.Err = lastErr
			case byCtx && lastErr != nil:
				e.Err = fmt.Errorf("gave up after %d attempts: %w: %w", attempt, lastErr, context.DeadlineExceeded)
			case byCtx:
				e.Err = fmt.Errorf("gave up after %d attempts: %w", attempt, context.DeadlineExceeded)
			case lastErr != nil:
				e.Err = fmt.Errorf("gave up after %d attempts (%v): %w", attempt, c.maxRetryTime, lastErr)
			default:
				e.Err = fmt.Errorf("gave up after %d attempts (%v)", attempt, c.maxRetryTime)
			}
			return res, e
		}
		c.log.LogAttrs(ctx, slog.LevelDebug, "nchan: retrying",
			slog.String("op", rq.op), slog.String("channel", rq.channel),
			slog.Int("attempt", attempt), slog.Int("status", lastStatus),
			slog.Any("error", lastErr), slog.Duration("wait", wait))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			c.stats.retries.Add(1) // counted once it is sure to be sent
		case <-ctx.Done():
			t.Stop()
			return res, ctxError(ctx, rq, lastStatus, lastErr)
		}
	}
}

// ctxError reports a context that ended while retrying, with what the
// earlier attempts met.
func ctxError(ctx context.Context, rq request, lastStatus int, lastErr error) error {
	err := ctx.Err()
	if err == nil { // the deadline passed, the context's timer has not fired yet
		err = context.DeadlineExceeded
	}
	if lastErr != nil && !errors.Is(lastErr, err) {
		err = fmt.Errorf("%w: %w", lastErr, err)
	}
	return &Error{Op: rq.op, Channel: rq.channel, Status: lastStatus, Err: err}
}

// deadlinePassed reports whether the context's deadline is past, which a
// connection's deadline can tell a moment before the context itself.
func deadlinePassed(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// retryLimit is when retrying stops: the context's deadline or
// MaxRetryTime from now, whichever comes first; byCtx tells which.
func (c *Client) retryLimit(ctx context.Context) (limit time.Time, byCtx bool) {
	limit = time.Now().Add(max(c.maxRetryTime, 0))
	if d, ok := ctx.Deadline(); ok && d.Before(limit) {
		return d, true
	}
	return limit, false
}

// backoff is the wait before retry number attempt (from 1): exponential from
// firstRetryWait, capped at MaxRetryWait, with the upper half jittered.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.maxRetryWait
	if attempt < 30 {
		d = min(firstRetryWait<<(attempt-1), c.maxRetryWait)
	}
	return d/2 + rand.N(d/2+1)
}

// progress records how far one attempt got.
type progress struct {
	reused    bool // the connection had served earlier requests
	wrote     bool // the whole request was written
	firstByte bool // an answer started
}

// attemptTrace records, for net/http, how far one attempt got; its hooks
// may run on the transport's goroutines.
type attemptTrace struct {
	reused    atomic.Bool
	wrote     atomic.Bool
	firstByte atomic.Bool
}

func (tr *attemptTrace) clientTrace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GotConn:              func(i httptrace.GotConnInfo) { tr.reused.Store(i.Reused) },
		WroteRequest:         func(i httptrace.WroteRequestInfo) { tr.wrote.Store(i.Err == nil) },
		GotFirstResponseByte: func() { tr.firstByte.Store(true) },
	}
}

// attempt sends the request once and reads the answer. A status with an
// error means the answer broke off while its body was read.
func (c *Client) attempt(ctx context.Context, rq *request, pr *progress) (int, []byte, error) {
	c.stats.request(rq.method)
	if c.tr != nil {
		return c.tr.roundTrip(ctx, c.target(rq.channel), rq, pr)
	}
	tr := new(attemptTrace)
	defer func() { pr.reused, pr.wrote, pr.firstByte = tr.reused.Load(), tr.wrote.Load(), tr.firstByte.Load() }()
	var body io.Reader
	if rq.body != nil || rq.method == http.MethodPost || rq.method == http.MethodPut {
		body = bytes.NewReader(rq.body) // sets Content-Length, even 0, and GetBody
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, tr.clientTrace()), rq.method, c.url(rq.channel), body)
	if err != nil {
		return 0, nil, err
	}
	if rq.contentType != "" {
		req.Header.Set("Content-Type", rq.contentType)
	}
	if rq.event != "" {
		req.Header.Set("X-EventSource-Event", rq.event)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err == nil {
		// Drain what is left so that the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	}
	return resp.StatusCode, b, err
}

// retryable reports whether err, from an attempt of method, leaves the
// request safe to send again. A refused dial never reached nginx. Other
// connection errors (reset, EOF, broken pipe) are retried for GET, PUT and
// DELETE, whose repetition does no harm (see Open and Close). A POST is
// retried only if nginx cannot have published it: it was not completely
// written, or it went out on a reused keep-alive connection that nginx closed
// before answering anything.
func retryable(err error, method string, pr *progress) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	if !connectionError(err) {
		return false
	}
	if method != http.MethodPost {
		return true
	}
	return !pr.wrote || (pr.reused && !pr.firstByte)
}

func connectionError(err error) bool {
	for _, target := range []error{io.EOF, io.ErrUnexpectedEOF, net.ErrClosed,
		syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE} {
		if errors.Is(err, target) {
			return true
		}
	}
	// net/http's unexported errServerClosedIdle.
	return strings.Contains(err.Error(), "server closed idle connection")
}
