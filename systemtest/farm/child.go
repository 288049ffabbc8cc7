package farm

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/relaytest"
)

// Main runs the farm and exits if this process is one (the environment
// sets [Env] to "1"); otherwise it returns at once. Call it first thing in
// TestMain of every test package that calls [Start].
func Main() {
	if os.Getenv(Env) != "1" {
		return
	}
	os.Exit(runFarm())
}

// farmProc is the state of the farm process.
type farmProc struct {
	cfg   config
	out   *bufio.Writer
	outMu sync.Mutex

	keys sync.Map // string → *keyState

	lastEvent atomic.Int64 // unix ns
	events    atomic.Int64

	connected, errs, disconnects, reconnects atomic.Int64
	firstErr                                 atomic.Value // string

	tls *tls.Config // nil: plaintext

	ctx    context.Context
	cancel context.CancelFunc
	connMu sync.Mutex
	conns  map[io.Closer]struct{}

	sharedMu sync.Mutex
	shared   map[int]*http.Transport // HTTP/2 with StreamsPerConn: by group
	wg       sync.WaitGroup
}

// keyState aggregates the deliveries of one key.
type keyState struct {
	mu          sync.Mutex
	count       int
	first, last int64
	lat         []int64
	minSent     int64
	per         []int32 // deliveries per listener
	waiters     []waiter
}

type waiter struct{ id, n int }

func (p *farmProc) say(r reply) {
	b, _ := json.Marshal(r)
	p.outMu.Lock()
	defer p.outMu.Unlock()
	p.out.WriteString(linePrefix)
	p.out.Write(b)
	p.out.WriteByte('\n')
	p.out.Flush()
}

func runFarm() int {
	p := &farmProc{out: bufio.NewWriter(os.Stdout), conns: map[io.Closer]struct{}{}, shared: map[int]*http.Transport{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 256<<20)
	if !in.Scan() {
		return 2
	}
	if err := json.Unmarshal(in.Bytes(), &p.cfg); err != nil {
		p.say(reply{Err: "bad configuration: " + err.Error()})
		return 2
	}
	defer p.stop()
	if p.cfg.Transport != HTTP1 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(p.cfg.RootCAs) {
			p.say(reply{Err: "no certificate in RootCAs"})
			return 2
		}
		p.tls = &tls.Config{RootCAs: pool}
	}

	if err := p.connectAll(); err != nil {
		p.say(reply{Err: err.Error()})
		return 1
	}
	p.say(reply{PID: os.Getpid()})

	for in.Scan() {
		var rq request
		if err := json.Unmarshal(in.Bytes(), &rq); err != nil {
			p.say(reply{Err: "bad request: " + err.Error()})
			continue
		}
		switch rq.Op {
		case "wait":
			p.wait(rq)
		case "stats":
			s := p.stats(rq.Key)
			p.say(reply{ID: rq.ID, Stats: &s})
		case "counters":
			c := p.counters()
			p.say(reply{ID: rq.ID, Counters: &c})
		case "check":
			go func() {
				for {
					idle := time.Duration(time.Now().UnixNano() - p.lastEvent.Load())
					if idle >= rq.Quiet {
						break
					}
					time.Sleep(rq.Quiet - idle) // a quiet period, not a synchronisation
				}
				p.say(reply{ID: rq.ID, Verdict: p.check(rq.Keys)})
			}()
		default:
			p.say(reply{ID: rq.ID, Err: "unknown op " + strconv.Quote(rq.Op)})
		}
	}
	return 0 // EOF: the parent is done
}

// connectAll starts every listener and waits until all have connected or
// one has failed.
func (p *farmProc) connectAll() error {
	n := len(p.cfg.Listeners)
	sem := make(chan struct{}, p.cfg.Parallel)
	failed := make(chan error, 1)
	var up sync.WaitGroup
	up.Add(n)
	for i, l := range p.cfg.Listeners {
		p.wg.Go(func() { p.listen(i, l, sem, &up, failed) })
	}
	all := make(chan struct{})
	go func() { up.Wait(); close(all) }()
	t := time.NewTimer(p.cfg.ConnectTimeout)
	defer t.Stop()
	select {
	case <-all:
		if p.connected.Load() < int64(n) {
			select {
			case err := <-failed:
				return fmt.Errorf("connecting listeners (%d of %d connected): %v", p.connected.Load(), n, err)
			default:
				return fmt.Errorf("%d of %d listeners connected", p.connected.Load(), n)
			}
		}
		return nil
	case err := <-failed:
		return fmt.Errorf("connecting listeners (%d of %d connected): %v", p.connected.Load(), n, err)
	case <-t.C:
		return fmt.Errorf("only %d of %d listeners connected after %v", p.connected.Load(), n, p.cfg.ConnectTimeout)
	}
}

func (p *farmProc) fail(err error) {
	p.errs.Add(1)
	p.firstErr.CompareAndSwap(nil, err.Error())
}

// listen connects listener i and reads its events until the farm stops
// (or, without Reconnect, until its stream ends).
func (p *farmProc) listen(i int, l Listener, sem chan struct{}, up *sync.WaitGroup, failed chan error) {
	first := true
	lastID := l.LastEventID
	fails := 0 // attempts in a row that brought no event
	for {
		sem <- struct{}{}
		conn, next, err := p.connect(i, l, lastID)
		<-sem
		if err != nil {
			if p.ctx.Err() != nil {
				if first {
					up.Done()
				}
				return
			}
			err = fmt.Errorf("listener %d (%s%s): %w", i, l.Addr, l.Path, err)
			p.fail(err)
			if first {
				select {
				case failed <- err:
				default:
				}
				up.Done()
				return
			}
			if fails++; fails >= 3 {
				return
			}
			continue
		}
		if !p.track(conn) {
			conn.Close()
			if first {
				up.Done()
			}
			return
		}
		p.connected.Add(1)
		if first {
			up.Done()
			first = false
		} else {
			p.reconnects.Add(1)
		}
		got := p.read(i, next, &lastID)
		p.connected.Add(-1)
		p.untrack(conn)
		if p.ctx.Err() != nil {
			return
		}
		p.disconnects.Add(1)
		if !p.cfg.Reconnect {
			return
		}
		if got {
			fails = 0
		} else if fails++; fails >= 3 {
			return
		}
	}
}

func (p *farmProc) track(c io.Closer) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.ctx.Err() != nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *farmProc) untrack(c io.Closer) {
	p.connMu.Lock()
	delete(p.conns, c)
	p.connMu.Unlock()
	c.Close()
}

// read records listener i's events until its stream ends; it reports
// whether it got any.
func (p *farmProc) read(i int, next func() (relaytest.Event, bool), lastID *string) bool {
	got := false
	for {
		ev, ok := next()
		if !ok {
			return got
		}
		now := time.Now().UnixNano()
		got = true
		if ev.ID != "" {
			*lastID = ev.ID
		}
		key, sent := parseStamp(ev.Data)
		if p.cfg.StampedOnly && sent == 0 {
			j := strings.Index(ev.Data, stampPrefix)
			if j < 0 {
				continue // not a message: a peer's connect reply or ping
			}
			if key, sent = parseStamp(ev.Data[j:]); sent == 0 {
				continue
			}
		}
		p.record(i, key, sent, now)
	}
}

func (p *farmProc) key(k string) *keyState {
	if ks, ok := p.keys.Load(k); ok {
		return ks.(*keyState)
	}
	ks, _ := p.keys.LoadOrStore(k, &keyState{per: make([]int32, len(p.cfg.Listeners))})
	return ks.(*keyState)
}

func (p *farmProc) record(i int, key string, sent, now int64) {
	p.events.Add(1)
	p.lastEvent.Store(now)
	ks := p.key(key)
	ks.mu.Lock()
	ks.count++
	ks.per[i]++
	// Receive times are taken before the lock, so deliveries of other
	// listeners may come here out of their order: keep the earliest and
	// the latest.
	if ks.count == 1 || now < ks.first {
		ks.first = now
	}
	ks.last = max(ks.last, now)
	if sent > 0 {
		ks.lat = append(ks.lat, now-sent)
		if ks.minSent == 0 || sent < ks.minSent {
			ks.minSent = sent
		}
	}
	var done []waiter
	if len(ks.waiters) > 0 {
		ks.waiters = slices.DeleteFunc(ks.waiters, func(w waiter) bool {
			if ks.count >= w.n {
				done = append(done, w)
				return true
			}
			return false
		})
	}
	ks.mu.Unlock()
	for _, w := range done {
		go p.answerWait(w.id, key)
	}
}

func (p *farmProc) wait(rq request) {
	ks := p.key(rq.Key)
	ks.mu.Lock()
	if ks.count >= rq.N {
		ks.mu.Unlock()
		p.answerWait(rq.ID, rq.Key)
		return
	}
	ks.waiters = append(ks.waiters, waiter{id: rq.ID, n: rq.N})
	ks.mu.Unlock()
}

func (p *farmProc) answerWait(id int, key string) {
	s := p.stats(key)
	p.say(reply{ID: id, Stats: &s})
}

func (p *farmProc) stats(key string) Stats {
	ks := p.key(key)
	ks.mu.Lock()
	s := Stats{Key: key, Count: ks.count, Stamped: len(ks.lat)}
	if ks.count > 0 {
		s.First, s.Last = time.Unix(0, ks.first), time.Unix(0, ks.last)
	}
	lat := slices.Clone(ks.lat)
	if ks.minSent > 0 {
		s.MinSent = time.Unix(0, ks.minSent)
	}
	ks.mu.Unlock()
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(f float64) time.Duration {
			r := int(f*float64(len(lat))+0.999999) - 1 // nearest rank
			return time.Duration(lat[min(max(r, 0), len(lat)-1)])
		}
		s.P50, s.P90, s.P99, s.Max = q(0.50), q(0.90), q(0.99), time.Duration(lat[len(lat)-1])
	}
	return s
}

func (p *farmProc) counters() Counters {
	c := Counters{
		Connected:   int(p.connected.Load()),
		Errors:      int(p.errs.Load()),
		Disconnects: int(p.disconnects.Load()),
		Reconnects:  int(p.reconnects.Load()),
		Events:      int(p.events.Load()),
	}
	if s, ok := p.firstErr.Load().(string); ok {
		c.FirstError = s
	}
	return c
}

// check reports "" if every listener got each of want exactly once and no
// event of another key.
func (p *farmProc) check(want []string) string {
	var names []string
	p.keys.Range(func(k, _ any) bool {
		names = append(names, k.(string))
		return true
	})
	slices.Sort(names)
	var msgs []string
	for _, k := range names {
		ks := p.key(k)
		ks.mu.Lock()
		count := ks.count
		per := slices.Clone(ks.per)
		ks.mu.Unlock()
		if !slices.Contains(want, k) {
			if count > 0 {
				msgs = append(msgs, fmt.Sprintf("%d unexpected events of key %.80q", count, k))
			}
			continue
		}
		bad := 0
		for i, g := range per {
			if g != 1 {
				if bad < 3 {
					msgs = append(msgs, fmt.Sprintf("listener %d got %.80q %d times", i, k, g))
				}
				bad++
			}
		}
		if bad > 0 {
			msgs = append(msgs, fmt.Sprintf("%d listeners did not get %.80q exactly once", bad, k))
		}
	}
	for _, k := range want {
		if !slices.Contains(names, k) && len(p.cfg.Listeners) > 0 {
			msgs = append(msgs, fmt.Sprintf("no listener got %.80q", k))
		}
	}
	return strings.Join(msgs, "; ")
}

// stop closes every connection and waits for the readers.
func (p *farmProc) stop() {
	p.connMu.Lock()
	p.cancel()
	for c := range p.conns {
		c.Close()
	}
	p.connMu.Unlock()
	p.wg.Wait()
	p.sharedMu.Lock()
	for _, tr := range p.shared {
		tr.CloseIdleConnections()
	}
	p.sharedMu.Unlock()
}

// connect opens listener l's stream over the farm's transport, resuming
// from lastID, and returns its connection (under TLS, the TCP connection:
// closing it ends the stream) and the reader of its events.
func (p *farmProc) connect(i int, l Listener, lastID string) (io.Closer, func() (relaytest.Event, bool), error) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	switch p.cfg.Transport {
	case TLS2:
		return p.connectHTTP2(i, l, lastID)
	case WebSocketTLS:
		return p.connectWebSocket(ctx, l, lastID)
	}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", l.Addr)
	if err != nil {
		return nil, nil, err
	}
	conn := raw
	if p.cfg.Transport == TLS1 {
		cfg := p.tls.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(l.Addr)
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, nil, err
		}
		conn = tc
	}
	br, err := sendRequest(conn, l, lastID)
	if err != nil {
		raw.Close()
		return nil, nil, err
	}
	return raw, func() (relaytest.Event, bool) { return relaytest.ReadEvent(br) }, nil
}

// sendRequest sends an EventSource request over conn and returns a reader of
// its body.
func sendRequest(conn net.Conn, l Listener, lastID string) (*bufio.Reader, error) {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	var b strings.Builder
	b.WriteString("GET " + l.Path + " HTTP/1.1\r\nHost: " + l.Addr + "\r\nAccept: text/event-stream\r\n")
	if lastID != "" {
		b.WriteString("Last-Event-ID: " + lastID + "\r\n")
	}
	for k, vs := range l.Header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	hreq, _ := http.NewRequest(http.MethodGet, "http://"+l.Addr+l.Path, nil)
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 1024), hreq)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", l.Path, resp.Status)
	}
	conn.SetDeadline(time.Time{})
	return bufio.NewReaderSize(resp.Body, 512), nil
}

// transport returns an HTTP transport of its own for one listener, over
// TLS with protos, and the TCP connection it dials once that is made.
func (p *farmProc) transport(protos func(*http.Protocols)) (*http.Transport, chan net.Conn) {
	dialed := make(chan net.Conn, 1)
	pr := new(http.Protocols)
	protos(pr)
	tr := &http.Transport{
		TLSClientConfig: p.tls.Clone(),
		Protocols:       pr,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				select {
				case dialed <- c:
				default:
				}
			}
			return c, err
		},
		DisableCompression: true,
	}
	return tr, dialed
}

// connectHTTP2 opens an EventSource stream over HTTP/2, on a connection of
// its own.
func (p *farmProc) connectHTTP2(i int, l Listener, lastID string) (io.Closer, func() (relaytest.Event, bool), error) {
	var (
		tr     *http.Transport
		dialed chan net.Conn
	)
	if k := p.cfg.StreamsPerConn; k > 1 {
		p.sharedMu.Lock()
		tr = p.shared[i/k]
		if tr == nil {
			tr, _ = p.transport(func(pr *http.Protocols) { pr.SetHTTP2(true) })
			p.shared[i/k] = tr
		}
		p.sharedMu.Unlock()
	} else {
		tr, dialed = p.transport(func(pr *http.Protocols) { pr.SetHTTP2(true) })
	}
	// The request's context ends the stream: it is cancelled if the answer
	// has not come within 10 seconds, and when the stream is closed.
	ctx, cancel := context.WithCancel(p.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+l.Addr+l.Path, nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	for k, vs := range l.Header {
		req.Header[k] = vs
	}
	timer := time.AfterFunc(10*time.Second, cancel)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if !timer.Stop() && err == nil {
		resp.Body.Close()
		err = fmt.Errorf("GET %s: no answer within 10s", l.Path)
	}
	fail := func(err error) (io.Closer, func() (relaytest.Event, bool), error) {
		cancel()
		if dialed != nil {
			tr.CloseIdleConnections()
		}
		return nil, nil, err
	}
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		resp.Body.Close()
		return fail(fmt.Errorf("GET %s: %s over %s", l.Path, resp.Status, resp.Proto))
	}
	br := bufio.NewReaderSize(resp.Body, 512)
	next := func() (relaytest.Event, bool) { return relaytest.ReadEvent(br) }
	var c io.Closer = resp.Body // a shared connection: ending the stream; the connection ends at stop
	if dialed != nil {
		select {
		case c = <-dialed:
		default:
			resp.Body.Close()
			return fail(fmt.Errorf("GET %s: no connection of its own", l.Path))
		}
	}
	return &streamCloser{cancel, c}, next, nil
}

// streamCloser ends an HTTP/2 stream: its request's context, and its
// connection or body.
type streamCloser struct {
	cancel context.CancelFunc
	c      io.Closer
}

func (s *streamCloser) Close() error {
	s.cancel()
	return s.c.Close()
}

// connectWebSocket opens a WebSocket over HTTP/1.1 with TLS.
func (p *farmProc) connectWebSocket(ctx context.Context, l Listener, lastID string) (io.Closer, func() (relaytest.Event, bool), error) {
	tr, dialed := p.transport(func(pr *http.Protocols) { pr.SetHTTP1(true) })
	h := http.Header{}
	if lastID != "" {
		h.Set("Last-Event-ID", lastID)
	}
	for k, vs := range l.Header {
		h[k] = vs
	}
	c, resp, err := websocket.Dial(ctx, "wss://"+l.Addr+l.Path, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
		HTTPHeader: h,
	})
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (%s)", err, resp.Status)
		}
		return nil, nil, err
	}
	c.SetReadLimit(-1)
	var conn net.Conn
	select {
	case conn = <-dialed:
	default:
		c.CloseNow()
		return nil, nil, fmt.Errorf("WebSocket %s: no connection of its own", l.Path)
	}
	return conn, func() (relaytest.Event, bool) {
		_, b, err := c.Read(p.ctx)
		if err != nil {
			c.CloseNow()
			return relaytest.Event{}, false
		}
		return relaytest.Event{Data: string(b)}, true
	}, nil
}
