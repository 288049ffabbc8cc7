package hub

import (
	"context"
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
// each of which follows its position at once (see hstream.deliver). Large
// sets are shared among several goroutines.
func dispatch(parked []*hstream, m *message, chunk int) {
	for len(parked) > chunk {
		go deliverAll(parked[:chunk:chunk], m)
		parked = parked[chunk:]
	}
	deliverAll(parked, m)
}

// deliverAll delivers m to a batch of streams of one channel (see
// deliver), then parks again those that are caught up, under one lock.
func deliverAll(batch []*hstream, m *message) {
	done := batch[:0] // written in full: to park, or to go on
	for _, s := range batch {
		if s.deliver(m) {
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

// deliver writes m, the message after s's position, as far as the socket
// takes it at once, and reports whether it took it all; otherwise a run
// goroutine takes over, or the stream has ended. The caller has the turn.
func (s *hstream) deliver(m *message) bool {
	if s.ended.Load() {
		s.finish()
		return false
	}
	b, gap := m.frame, s.gap
	if gap {
		b = append(gapEventFrame(s.l.pos), m.frame...)
	}
	s.gap = false
	s.l.pos = m.pos
	rest, err := s.cw.tryAll(b)
	switch {
	case err != nil:
		s.err = err
		s.finish()
		return false
	case rest != nil:
		go s.runRest(rest, gap)
		return false
	}
	s.sent(gap)
	return true
}

// sent records a delivery written in full.
func (s *hstream) sent(gap bool) {
	s.wrote.Store(time.Now().UnixNano())
	s.l.delivered(gap)
}

// runRest finishes writing a delivery the socket did not take at once,
// then goes on as run.
func (s *hstream) runRest(rest []byte, gap bool) {
	if err := s.cw.write(rest); err != nil {
		s.err = err
		s.finish()
		return
	}
	s.sent(gap)
	s.run(nil)
}

// run writes pending, if any, then every message after the stream's
// position, each write waiting within Options.WriteTimeout, until the
// stream is caught up and parked, or ends. It has the turn.
func (s *hstream) run(pending []byte) {
	if pending != nil && !s.write(pending) {
		s.finish()
		return
	}
	for {
		m, gap, park := s.nextOrPark()
		switch {
		case park:
			return
		case s.ended.Load():
			s.finish()
			return
		case m == nil: // the channel closed
			if s.write(gone) {
				s.l.hub.stats.gone.Add(1)
			}
			s.finish()
			return
		}
		b := m.frame
		if gap {
			b = append(gapEventFrame(s.l.pos), m.frame...)
		}
		s.l.pos = m.pos
		if !s.write(b) {
			s.finish()
			return
		}
		s.l.delivered(gap)
	}
}

// nextOrPark returns the next message after the stream's position, and
// whether messages were dropped before it; or parks the stream (park) when
// there is none, keeping the gap for the next message. It returns nil, not
// parking, when the channel is closed or the client has gone.
func (s *hstream) nextOrPark() (m *message, gap, park bool) {
	c := s.l.ch
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || s.ended.Load() {
		return nil, false, false
	}
	if m, gap = c.after(s.l.pos); m != nil {
		return m, gap, false
	}
	s.park(gap)
	return nil, false, true
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
}

// write writes b, waiting within Options.WriteTimeout, and reports whether
// it did.
func (s *hstream) write(b []byte) bool {
	if err := s.cw.write(b); err != nil {
		s.err = err
		return false
	}
	s.wrote.Store(time.Now().UnixNano())
	return true
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
