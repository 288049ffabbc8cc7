package hub

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// hstream is a hijacked EventSource stream. While it is caught up it has no
// goroutine writing for it: it is parked on its channel (chanState.parked),
// and Publish hands the channel's parked streams to a dispatching goroutine
// that writes the message to each socket without waiting. A stream whose
// socket does not take the message at once, or that has more to catch up
// on, gets a goroutine of its own (run) until it is caught up and parked
// again; that goroutine's writes wait within Options.WriteTimeout. A
// goroutine blocked in a small Read notices a client that goes away.
//
// One party at a time has the stream's turn to write: the channel while it
// is parked, then a dispatcher, a run goroutine, the heartbeat or the
// reader that took it from there. The one that has the turn when the
// stream ends finishes it, once.
type hstream struct {
	l          *listener // its pos is the turn's
	conn       net.Conn
	cw         *connWriter
	gap        bool // parked after a gap: the next message says so
	slot       int  // its index in chanState.parked while it is there
	readerDone chan struct{}
	ended      atomic.Bool  // the client went away: park no more
	finished   atomic.Bool  // finish ran
	wrote      atomic.Int64 // when the last write ended, in Unix nanoseconds
	beat       *time.Timer  // the heartbeat; nil when there is none
	err        error        // the write error that ended the stream
}

// startStream serves l's stream on conn, whose header net/http has sent;
// the first write is the ": hi" comment.
func startStream(l *listener, conn net.Conn) {
	s := &hstream{l: l, conn: conn, readerDone: make(chan struct{}),
		cw: newConnWriter(conn, l.hub.opts.WriteTimeout)}
	s.wrote.Store(time.Now().UnixNano())
	if d := l.hub.opts.Heartbeat; d > 0 {
		s.beat = time.AfterFunc(d, s.heartbeat)
	}
	go s.read()
	go s.run(hello)
}

// read waits for the client to close the connection (or to fail it); what
// the client sends meanwhile is dropped. Then, if the stream is parked, it
// takes the turn and finishes the stream; else the one that has the turn
// will. Over TLS it reads the connection under TLS, undeciphered: nothing
// the client sends is of use, and so the reading goroutine keeps a small
// stack and the TLS connection's input buffers do not grow.
func (s *hstream) read() {
	var b [16]byte
	conn := rawConn(s.conn)
	for {
		if _, err := conn.Read(b[:]); err != nil {
			break
		}
	}
	s.ended.Store(true)
	close(s.readerDone)
	if s.unpark() {
		s.finish()
	}
}

// unpark takes the turn from the channel if the stream is parked there.
func (s *hstream) unpark() bool {
	c := s.l.ch
	c.mu.Lock()
	defer c.mu.Unlock()
	// A slot left from an earlier parking names another stream, or none:
	// Publish and close take the whole slice.
	if s.slot >= len(c.parked) || c.parked[s.slot] != s {
		return false
	}
	last := len(c.parked) - 1
	c.parked[s.slot] = c.parked[last]
	c.parked[s.slot].slot = s.slot
	c.parked[last] = nil
	c.parked = c.parked[:last]
	return true
}

// inlineDispatch is the most parked streams to which Publish writes a
// message itself; more get a dispatching goroutine.
const inlineDispatch = 4

// dispatchChunk is the most streams one dispatching goroutine writes to
// (Hub.dispatchChunk, which tests lower).
const dispatchChunk = 1024

// dispatch writes m to the streams that were parked when it was published,
// each of which follows its position at once (see hstream.push). Large
// sets are shared among several goroutines.
func dispatch(parked []*hstream, m *message, chunk int) {
	for len(parked) > chunk {
		go deliverAll(parked[:chunk:chunk], m)
		parked = parked[chunk:]
	}
	deliverAll(parked, m)
}

// deliverAll delivers m to a batch of streams of one channel (see push),
// then parks again those that are caught up, under one lock.
func deliverAll(batch []*hstream, m *message) {
	done := batch[:0] // written in full: to park, or to go on
	for _, s := range batch {
		if s.push(m) {
			done = append(done, s)
		}
	}
	if len(done) == 0 {
		return
	}
	c := done[0].l.ch
	more := done[:0]
	c.mu.Lock()
	for _, s := range done {
		if !s.parkLocked() {
			more = append(more, s)
		}
	}
	c.mu.Unlock()
	for _, s := range more {
		go s.run(nil) // more to send, the channel closed, or the client left
	}
}

// push is the delivery of a parked stream, Publish's fast path: it writes
// m, the message after s's position, as the stream's encoding makes it (as
// listener.deliver does), as far as the socket takes it at once, and
// reports whether it took it all; otherwise a run goroutine takes over, or
// the stream has ended. The caller has the turn.
func (s *hstream) push(m *message) bool {
	if s.ended.Load() {
		s.finish()
		return false
	}
	d := s.l.encode(m, s.gap)
	s.gap = false
	rest, err := s.cw.tryAll(d.b)
	switch {
	case err != nil:
		d.release()
		s.err = err
		s.finish()
		return false
	case rest != nil:
		go s.runRest(rest, d)
		return false
	}
	d.release()
	s.wrote.Store(time.Now().UnixNano())
	s.l.delivered(d.gap)
	return true
}

// runRest finishes writing d, of which the socket did not take rest at
// once, then goes on as run.
func (s *hstream) runRest(rest []byte, d delivery) {
	err := s.put(rest)
	d.release()
	if err != nil {
		s.finish()
		return
	}
	s.l.delivered(d.gap)
	s.run(nil)
}

// run writes pending, if any, then every message after the stream's
// position through the delivery loop (listener.serve), each write waiting
// within Options.WriteTimeout, until the stream is caught up and parked,
// or ends. It has the turn.
func (s *hstream) run(pending []byte) {
	if pending != nil && s.put(pending) != nil {
		s.finish()
		return
	}
	if s.l.serve(s) != errParked { // once parked, the stream is no longer this goroutine's
		s.finish()
	}
}

// errParked ends the delivery loop of a stream that is caught up and
// parked.
var errParked = errors.New("parked")

// next returns the next message after the stream's position, and whether
// messages were dropped before it; or parks the stream (errParked) when
// there is none, keeping the gap for the next message. Without a message
// it returns errGone when the channel is closed, nil when the client has
// gone.
func (s *hstream) next() (*message, bool, error) {
	c := s.l.ch
	c.mu.Lock()
	closed := c.closed
	var m *message
	var gap bool
	if !closed && !s.ended.Load() {
		if m, gap = c.after(s.l.pos); m == nil {
			s.park(gap)
			c.mu.Unlock()
			return nil, false, errParked
		}
	}
	c.mu.Unlock()
	switch {
	case s.ended.Load():
		return nil, false, nil
	case closed:
		return nil, false, errGone
	}
	return m, gap, nil
}

// write writes d, waiting within Options.WriteTimeout.
func (s *hstream) write(d delivery) error { return s.put(d.b) }

func (s *hstream) gone() (bool, error) {
	err := s.put(gone)
	return err == nil, err
}

// parkLocked parks the stream if it is caught up, the channel open and the
// client there, and reports whether it did. The caller holds c.mu.
func (s *hstream) parkLocked() bool {
	c := s.l.ch
	if c.closed || s.ended.Load() {
		return false
	}
	m, gap := c.after(s.l.pos)
	if m != nil {
		return false
	}
	s.park(gap)
	return true
}

// park puts the stream in its channel's parked set, keeping gap for the
// next message. The caller holds c.mu.
func (s *hstream) park(gap bool) {
	c := s.l.ch
	s.slot = len(c.parked)
	c.parked = append(c.parked, s)
	s.gap = gap
	if s.l.pos.Compare(c.last) > 0 && s.l.pos.Compare(c.parkedAhead) > 0 {
		c.parkedAhead = s.l.pos
	}
}

// put writes b, waiting within Options.WriteTimeout; a failure is kept
// for finish.
func (s *hstream) put(b []byte) error {
	if err := s.cw.write(b); err != nil {
		s.err = err
		return err
	}
	s.wrote.Store(time.Now().UnixNano())
	return nil
}

// heartbeat sends a comment after Options.Heartbeat of silence, if the
// stream is parked (else it is writing anyway), and sets itself again.
func (s *hstream) heartbeat() {
	if s.finished.Load() {
		return
	}
	d := s.l.hub.opts.Heartbeat
	if silence := time.Since(time.Unix(0, s.wrote.Load())); silence < d {
		s.beat.Reset(d - silence)
		return
	}
	s.beat.Reset(d)
	if s.unpark() {
		s.run(heartbeat)
	}
}

// finish closes the connection, waits for the reader, and releases the
// listener's place. The caller has the turn, so it runs once.
func (s *hstream) finish() {
	s.finished.Store(true)
	if s.beat != nil {
		s.beat.Stop()
	}
	if s.err != nil {
		// A failed or timed-out write: no TLS close_notify, which
		// would wait on a socket that does not take writes.
		rawConn(s.conn).Close()
	} else {
		s.conn.Close()
	}
	<-s.readerDone
	l, h := s.l, s.l.hub
	if s.err != nil {
		h.dropped(context.Background(), l, s.err) // counted before the listener leaves
	}
	h.leave(l.ch, l.transport)
	h.serving.Done()
}
