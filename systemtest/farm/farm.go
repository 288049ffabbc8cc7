// Package farm runs many EventSource listeners over raw TCP in a child
// process, for tests and benchmarks that need more connections than one
// process may hold.
//
// RLIMIT_NOFILE is 20000 on the machines this project benchmarks on and its
// hard limit cannot be raised without CAP_SYS_RESOURCE: an in-process relay
// serving 10,000 listeners holds 10,000 server ends, and the 10,000 client
// ends must live elsewhere. The farm is the importing test binary run again
// with the environment variable [Env] set; [Main], called first thing in the
// importing package's TestMain, turns that child into the farm:
//
//	func TestMain(m *testing.M) {
//		farm.Main() // returns at once unless this process is a farm
//		os.Exit(m.Run())
//	}
//
// The parent starts a farm with [Start], which connects every [Listener]
// (an HTTP/1.1 GET with Accept: text/event-stream, the listener's
// Last-Event-ID and headers, such as Cookie) and returns once all have their
// 200 answer. Events are read with relaytest.ReadEvent.
//
// Options.Transport connects them over TLS instead (HTTP/1.1, or HTTP/2
// through net/http's client, one connection per listener), or as WebSocket
// clients over TLS; [TestCert] makes the server's certificate and the PEM
// the farm trusts. Options.StampedOnly serves servers that wrap the
// published body in an envelope of their own and send other events too.
//
// # Messages, keys and latency
//
// The farm groups deliveries by a key taken from each event's data: a body
// made by [Body] or [Stamp] (a JSON object {"farm":"<key>","sent":<unix ns>}
// with optional padding) has the key <key> and a send time; any other data is
// its own key, without a send time. For each key the farm keeps the number
// of deliveries, the first and last receive times and, for stamped bodies,
// every delivery's latency (receive time minus send time; both clocks are the
// machine's wall clock). [Farm.Wait] waits until a key has n deliveries and
// returns its [Stats]: count, first and last receive, latency quantiles.
// [Farm.Check] verifies that every listener got each of a set of keys
// exactly once and nothing else. [Farm.Counters] reports connect errors,
// disconnects and reconnects.
//
// A farm lives until [Farm.Close] or the end of the test (t.Cleanup): its
// standard input is closed, it closes its connections and exits.
package farm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Env is the environment variable that marks the farm process. [Start] sets
// it to "1" in the child's environment.
const Env = "SESSIONPUSH_FARM"

// linePrefix marks the farm's protocol lines on its standard output.
const linePrefix = "FARM "

// ErrExited is returned (wrapped) when the farm process has exited.
var ErrExited = errors.New("farm: listener process exited")

// ErrTimeout is returned (wrapped) by [Farm.Wait] when the deliveries did
// not arrive in time.
var ErrTimeout = errors.New("farm: timed out")

// Listener is one EventSource listener.
type Listener struct {
	// Addr is the server's host:port.
	Addr string `json:"addr"`
	// Path is the request target, e.g. "/sub/<channel>?x=y".
	Path string `json:"path"`
	// LastEventID is sent as the Last-Event-ID header if not empty.
	LastEventID string `json:"last_event_id,omitempty"`
	// Header holds more request headers, e.g. Cookie.
	Header http.Header `json:"header,omitempty"`
}

// Options configures a farm.
type Options struct {
	// Listeners are connected in order, Parallel at a time.
	Listeners []Listener
	// Parallel bounds the connections being set up at once. Zero means 64.
	Parallel int
	// ConnectTimeout bounds the connection of all listeners. Zero means
	// one minute plus one millisecond per listener.
	ConnectTimeout time.Duration
	// Reconnect makes a listener whose stream ends connect again, resuming
	// from the ID of the last event it got (else its LastEventID); it gives
	// up after 3 attempts in a row that bring no event. Without it a listener
	// whose stream ends stays disconnected. Both count in [Counters].
	Reconnect bool
	// Transport is how every listener connects: plaintext HTTP/1.1 (the
	// zero value), HTTP/1.1 over TLS, HTTP/2 over TLS, or WebSocket over
	// TLS. Over TLS the server must present a certificate that RootCAs
	// trusts.
	Transport Transport
	// StreamsPerConn, over HTTP/2 (TLS2), puts that many listeners on one
	// connection, each a stream of its own (as a browser does with the
	// EventSources of its tabs on one origin); zero or one: a connection
	// per listener. The server's concurrent streams limit must allow it.
	StreamsPerConn int
	// RootCAs is the PEM of the certificates the listeners trust over TLS;
	// see [TestCert].
	RootCAs []byte
	// StampedOnly makes the farm record only events whose data holds a
	// [Stamp] body, anywhere in it (a peer's envelope around the body, such
	// as a Centrifuge publication), and drop every other event (a peer's
	// connect reply, pings) instead of counting it as its own key.
	StampedOnly bool
}

// Transport is how a listener connects (Options.Transport).
type Transport string

const (
	// HTTP1 is an EventSource request over plaintext HTTP/1.1, written
	// and read over the raw TCP connection.
	HTTP1 Transport = ""
	// TLS1 is the same over TLS, negotiating http/1.1 by ALPN.
	TLS1 Transport = "tls-h1"
	// TLS2 is an EventSource request over HTTP/2 with TLS, one
	// connection per listener, through net/http's HTTP/2 client.
	TLS2 Transport = "h2"
	// WebSocketTLS is a WebSocket over HTTP/1.1 with TLS, offering no
	// subprotocol: each text or binary message is an event's data.
	WebSocketTLS Transport = "ws-tls"
)

// config is what the parent sends the farm as its first line.
type config struct {
	Listeners      []Listener    `json:"listeners"`
	Parallel       int           `json:"parallel"`
	ConnectTimeout time.Duration `json:"connect_timeout"`
	Reconnect      bool          `json:"reconnect"`
	Transport      Transport     `json:"transport,omitempty"`
	RootCAs        []byte        `json:"root_cas,omitempty"`
	StreamsPerConn int           `json:"streams_per_conn,omitempty"`
	StampedOnly    bool          `json:"stamped_only,omitempty"`
}

// Stats are the deliveries of one key.
type Stats struct {
	Key string `json:"key"`
	// Count is the number of deliveries of the key, over all listeners.
	Count int `json:"count"`
	// First and Last are the receive times of the first and last
	// delivery; zero if Count is 0.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// Stamped is the number of deliveries whose body had a send time; the
	// latencies are over those.
	Stamped int `json:"stamped"`
	// MinSent is the earliest send time of the stamped deliveries.
	MinSent time.Time `json:"min_sent"`
	// P50, P90, P99 and Max are quantiles of receive minus send time
	// (nearest rank).
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}

// Counters count what happened to the farm's connections.
type Counters struct {
	// Connected is the number of listeners with an open stream now.
	Connected int `json:"connected"`
	// Errors counts failed connection attempts (dial, write, non-200),
	// including failed reconnects.
	Errors int `json:"errors"`
	// Disconnects counts streams that ended without [Farm.Close].
	Disconnects int `json:"disconnects"`
	// Reconnects counts successful reconnections (Options.Reconnect).
	Reconnects int `json:"reconnects"`
	// Events counts all events received.
	Events int `json:"events"`
	// FirstError is the text of the first error, if any.
	FirstError string `json:"first_error,omitempty"`
}

// request is a command from the parent; reply is the farm's answer.
type request struct {
	ID    int           `json:"id"`
	Op    string        `json:"op"` // "wait", "stats", "check", "counters"
	Key   string        `json:"key,omitempty"`
	N     int           `json:"n,omitempty"`
	Keys  []string      `json:"keys,omitempty"`
	Quiet time.Duration `json:"quiet,omitempty"`
}

type reply struct {
	ID       int       `json:"id"` // 0: the connect report
	Err      string    `json:"err,omitempty"`
	Stats    *Stats    `json:"stats,omitempty"`
	Verdict  string    `json:"verdict,omitempty"`
	Counters *Counters `json:"counters,omitempty"`
	PID      int       `json:"pid,omitempty"`
}

// Farm is the parent's handle on a farm process. Its methods are safe for
// concurrent use.
type Farm struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	inMu sync.Mutex

	mu      sync.Mutex
	nextID  int
	waiting map[int]chan reply
	exited  chan struct{} // closed when the process has exited
	closed  bool
	pid     int
}

// Start starts a farm process for opts.Listeners and returns once every
// listener has its 200 answer; it fails the test if one cannot connect. The
// importing test binary must call [Main] from its TestMain. The farm is
// closed at the end of the test.
func Start(t testing.TB, opts Options) *Farm {
	t.Helper()
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	})
	return f
}

// New is [Start] without a test: it returns an error instead of failing
// the test, and the caller must call [Farm.Close].
func New(opts Options) (*Farm, error) {
	cfg := config{Listeners: opts.Listeners, Parallel: opts.Parallel, ConnectTimeout: opts.ConnectTimeout, Reconnect: opts.Reconnect,
		Transport: opts.Transport, RootCAs: opts.RootCAs, StampedOnly: opts.StampedOnly, StreamsPerConn: opts.StreamsPerConn}
	switch cfg.Transport {
	case HTTP1, TLS1, TLS2, WebSocketTLS:
	default:
		return nil, fmt.Errorf("farm: unknown transport %q", cfg.Transport)
	}
	if cfg.Transport != HTTP1 && len(cfg.RootCAs) == 0 {
		return nil, fmt.Errorf("farm: transport %q without RootCAs", cfg.Transport)
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 64
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = time.Minute + time.Duration(len(cfg.Listeners))*time.Millisecond
	}
	// -test.run=^$: if the importing package's TestMain does not call
	// Main, the child runs no test and exits, and Start reports it.
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), Env+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("farm: starting %s: %w", os.Args[0], err)
	}
	f := &Farm{cmd: cmd, in: in, waiting: map[int]chan reply{}, exited: make(chan struct{})}
	ready := make(chan reply, 1)
	f.waiting[0] = ready
	go f.read(out)

	b, _ := json.Marshal(cfg)
	f.inMu.Lock()
	_, err = in.Write(append(b, '\n'))
	f.inMu.Unlock()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("farm: sending the listeners: %w", err)
	}
	select {
	case r := <-ready:
		if r.Err != "" {
			f.Close()
			return nil, fmt.Errorf("farm: %s", r.Err)
		}
		f.pid = r.PID
		return f, nil
	case <-f.exited:
		return nil, fmt.Errorf("%w before its listeners connected (does TestMain call farm.Main?)", ErrExited)
	case <-time.After(cfg.ConnectTimeout + 30*time.Second):
		f.Close()
		return nil, fmt.Errorf("farm: listeners not connected after %v: %w", cfg.ConnectTimeout, ErrTimeout)
	}
}

// read dispatches the farm's replies until it exits.
func (f *Farm) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line, ok := cutPrefix(sc.Text(), linePrefix)
		if !ok {
			continue
		}
		var r reply
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			continue
		}
		f.mu.Lock()
		ch := f.waiting[r.ID]
		delete(f.waiting, r.ID)
		f.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
	io.Copy(io.Discard, out)
	f.cmd.Wait()
	close(f.exited)
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return s, false
}

// PID is the farm process's ID.
func (f *Farm) PID() int { return f.pid }

// call sends rq and waits for its reply for at most timeout.
func (f *Farm) call(rq request, timeout time.Duration) (reply, error) {
	ch := make(chan reply, 1)
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return reply{}, fmt.Errorf("farm: %s after Close: %w", rq.Op, ErrExited)
	}
	f.nextID++
	rq.ID = f.nextID
	f.waiting[rq.ID] = ch
	f.mu.Unlock()
	b, _ := json.Marshal(rq)
	f.inMu.Lock()
	_, err := f.in.Write(append(b, '\n'))
	f.inMu.Unlock()
	if err != nil {
		return reply{}, fmt.Errorf("farm: %s: %w (%v)", rq.Op, ErrExited, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.Err != "" {
			return r, fmt.Errorf("farm: %s", r.Err)
		}
		return r, nil
	case <-f.exited:
		return reply{}, fmt.Errorf("farm: %s: %w", rq.Op, ErrExited)
	case <-t.C:
		f.mu.Lock()
		delete(f.waiting, rq.ID)
		f.mu.Unlock()
		return reply{}, fmt.Errorf("farm: %s %q: %w after %v", rq.Op, rq.Key, ErrTimeout, timeout)
	}
}

// Wait waits until key has at least n deliveries, for at most timeout, and
// returns its Stats. On timeout it returns the Stats so far and an error
// wrapping [ErrTimeout].
func (f *Farm) Wait(key string, n int, timeout time.Duration) (Stats, error) {
	r, err := f.call(request{Op: "wait", Key: key, N: n}, timeout)
	if errors.Is(err, ErrTimeout) {
		s, _ := f.Stats(key)
		return s, err
	}
	if r.Stats == nil {
		return Stats{Key: key}, err
	}
	return *r.Stats, err
}

// Stats returns the deliveries of key so far.
func (f *Farm) Stats(key string) (Stats, error) {
	r, err := f.call(request{Op: "stats", Key: key}, time.Minute)
	if r.Stats == nil {
		return Stats{Key: key}, err
	}
	return *r.Stats, err
}

// Check waits until no event has arrived for quiet (so that a late
// duplicate would be seen), then reports "" if every listener got each of
// keys exactly once and no event of another key, else what went wrong.
func (f *Farm) Check(keys []string, quiet time.Duration) (string, error) {
	r, err := f.call(request{Op: "check", Keys: keys, Quiet: quiet}, time.Minute+10*quiet)
	return r.Verdict, err
}

// Counters reports what happened to the farm's connections.
func (f *Farm) Counters() (Counters, error) {
	r, err := f.call(request{Op: "counters"}, time.Minute)
	if r.Counters == nil {
		return Counters{}, err
	}
	return *r.Counters, err
}

// Close closes the farm's standard input, so that it closes its connections
// and exits, and waits for it (killing it after 30 seconds). It is
// idempotent.
func (f *Farm) Close() error {
	f.mu.Lock()
	already := f.closed
	f.closed = true
	f.mu.Unlock()
	if !already {
		f.inMu.Lock()
		f.in.Close()
		f.inMu.Unlock()
	}
	select {
	case <-f.exited:
		return nil
	case <-time.After(30 * time.Second):
		f.cmd.Process.Kill()
		<-f.exited
		return fmt.Errorf("farm: process %d did not exit within 30s; killed", f.cmd.Process.Pid)
	}
}

// Stamp is the body format whose key and send time the farm reads. Encode
// it with encoding/json (or pass it as a payload that is JSON-encoded, as
// sessionpush.Manager does) or build it with [Body].
type Stamp struct {
	Key  string `json:"farm"`
	Sent int64  `json:"sent"` // Unix nanoseconds
	Pad  string `json:"pad,omitempty"`
}

// NewStamp returns a Stamp for key sent now.
func NewStamp(key string) Stamp { return Stamp{Key: key, Sent: time.Now().UnixNano()} }

// Body returns the JSON body of Stamp{key, sent, pad bytes of padding}.
// key must not contain '"' or '\\'.
func Body(key string, sent time.Time, pad int) []byte {
	b := make([]byte, 0, 40+len(key)+pad)
	b = append(b, `{"farm":"`...)
	b = append(b, key...)
	b = append(b, `","sent":`...)
	b = strconv.AppendInt(b, sent.UnixNano(), 10)
	if pad > 0 {
		b = append(b, `,"pad":"`...)
		for range pad {
			b = append(b, 'x')
		}
		b = append(b, '"')
	}
	return append(b, '}')
}

// stampPrefix starts a [Stamp] body.
const stampPrefix = `{"farm":"`

// parseStamp reads the key and send time of data if it is a [Stamp] body
// whose "farm" field comes first and "sent" second, as encoding/json and
// [Body] write them; else it returns data itself as the key.
func parseStamp(data string) (key string, sent int64) {
	const p1, p2 = stampPrefix, `","sent":`
	rest, ok := cutPrefix(data, p1)
	if !ok {
		return data, 0
	}
	i := 0
	for i < len(rest) && rest[i] != '"' {
		i++
	}
	k := rest[:i]
	rest, ok = cutPrefix(rest[i:], p2)
	if !ok {
		return data, 0
	}
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(rest[:j], 10, 64)
	if err != nil {
		return data, 0
	}
	return k, n
}
