package nchan

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// Stats is a snapshot of what a [Client] has done since [New]; see
// [Client.Stats].
type Stats struct {
	// Requests counts the HTTP requests sent, each attempt of a retried
	// call included, by method.
	Requests MethodCounts
	// Failures counts the calls (Open, Publish, Info, Close) that returned
	// an error, by reason.
	Failures FailureCounts
	// Retries counts the attempts sent again after a 503 or a connection
	// error.
	Retries uint64
	// KnownOpen is how many channels the Client trusts to be open now
	// (seen open less than [Options.ExistsTTL] ago), for which Publish sends
	// only its POST.
	KnownOpen int
}

// MethodCounts counts HTTP requests by method.
type MethodCounts struct {
	Get, Post, Put, Delete uint64
}

// FailureCounts counts failed calls by reason. Every failed call counts
// under exactly one reason, the first that applies in this order.
type FailureCounts struct {
	// Invalid: a channel ID, content type or event name was refused before
	// anything was sent (relay.ErrInvalidID and the like), or the push
	// module refused an empty message ([ErrEmptyMessage]).
	Invalid uint64
	// NotFound: the channel is not open ([relay.ErrChannelNotFound]).
	NotFound uint64
	// TooLarge: the body exceeded the server's limit
	// ([relay.ErrMessageTooLarge]).
	TooLarge uint64
	// Timeout: the context's deadline passed or it was cancelled before
	// an answer came (while the server was unavailable, for example).
	Timeout uint64
	// Unavailable: the server could not be reached or answered 503 until
	// Options.MaxRetryTime ran out (or retrying is off), or a connection
	// broke in a way that forbids a retry (a POST that may have been
	// published).
	Unavailable uint64
	// Status: the server answered an unexpected status, or an answer that
	// could not be read.
	Status uint64
}

// Failure reasons, as the "reason" label of RelayStats.
const (
	reasonInvalid     = "invalid"
	reasonNotFound    = "not_found"
	reasonTooLarge    = "too_large"
	reasonTimeout     = "timeout"
	reasonUnavailable = "unavailable"
	reasonStatus      = "status"
)

var reasons = [...]string{reasonInvalid, reasonNotFound, reasonTooLarge, reasonTimeout, reasonUnavailable, reasonStatus}

var methods = [...]string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete}

// counters are a Client's statistics, updated atomically.
type counters struct {
	requests [len(methods)]atomic.Uint64
	failures [len(reasons)]atomic.Uint64
	retries  atomic.Uint64
}

func (s *counters) request(method string) {
	for i, m := range methods {
		if m == method {
			s.requests[i].Add(1)
			return
		}
	}
}

// failed counts *err, if any, under its reason.
func (s *counters) failed(err *error) {
	if *err != nil {
		s.failures[reasonIndex(*err)].Add(1)
	}
}

func reasonIndex(err error) int {
	var e *Error
	errors.As(err, &e)
	switch {
	case errors.Is(err, relay.ErrInvalidID) || errors.Is(err, ErrEmptyMessage) || errors.Is(err, errBadHeader):
		return 0
	case errors.Is(err, relay.ErrChannelNotFound):
		return 1
	case errors.Is(err, relay.ErrMessageTooLarge):
		return 2
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return 3
	case e != nil && (e.Status == http.StatusServiceUnavailable || e.Status == 0 && transportError(e.Err)):
		return 4
	}
	return 5
}

// transportError tells an error met on the way to the server from one
// found in the caller's input.
func transportError(err error) bool {
	var op *net.OpError
	return err != nil && (connectionError(err) || errors.As(err, &op))
}

// Stats returns a snapshot of the Client's counters. It is safe for
// concurrent use; KnownOpen costs a walk over the channels the Client
// remembers.
func (c *Client) Stats() Stats {
	s := &c.stats
	return Stats{
		Requests: MethodCounts{
			Get: s.requests[0].Load(), Post: s.requests[1].Load(),
			Put: s.requests[2].Load(), Delete: s.requests[3].Load(),
		},
		Failures: FailureCounts{
			Invalid: s.failures[0].Load(), NotFound: s.failures[1].Load(), TooLarge: s.failures[2].Load(),
			Timeout: s.failures[3].Load(), Unavailable: s.failures[4].Load(), Status: s.failures[5].Load(),
		},
		Retries:   s.retries.Load(),
		KnownOpen: c.reg.knownOpen(time.Now()),
	}
}

// RelayStats implements [relay.StatsReporter]: requests_total by method,
// failures_total by reason (invalid, not_found, too_large, timeout,
// unavailable, status), retries_total and the gauge known_open_channels.
func (c *Client) RelayStats() []relay.Stat {
	st := c.Stats()
	out := make([]relay.Stat, 0, len(methods)+len(reasons)+2)
	reqs := [...]uint64{st.Requests.Get, st.Requests.Post, st.Requests.Put, st.Requests.Delete}
	for i, m := range methods {
		out = append(out, relay.Stat{Name: "requests_total", Help: "HTTP requests sent to the Nchan publisher endpoint, retries included.",
			Labels: [][2]string{{"method", m}}, Value: float64(reqs[i])})
	}
	f := st.Failures
	fails := [...]uint64{f.Invalid, f.NotFound, f.TooLarge, f.Timeout, f.Unavailable, f.Status}
	for i, r := range reasons {
		out = append(out, relay.Stat{Name: "failures_total", Help: "Relay calls (open, publish, info, close) that failed, by reason.",
			Labels: [][2]string{{"reason", r}}, Value: float64(fails[i])})
	}
	out = append(out,
		relay.Stat{Name: "retries_total", Help: "Requests sent again after a 503 answer or a connection error.", Value: float64(st.Retries)},
		relay.Stat{Name: "known_open_channels", Help: "Channels the client trusts to be open, to which it publishes without checking.", Gauge: true, Value: float64(st.KnownOpen)},
	)
	return out
}

var _ relay.StatsReporter = (*Client)(nil)
