package hub

import (
	"errors"
	"net/http"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// listener is one ServeListener call in progress, or a hijacked
// EventSource stream.
type listener struct {
	hub       *Hub
	ch        *chanState
	w         http.ResponseWriter // nil once hijacked
	rc        *http.ResponseController
	pos       relay.MessageID // the newest message delivered, or the resume position
	channel   string
	transport transport
	enc       encoding  // what its transport sends for a message
	wrote     bool      // the response started: a later failure is a write's
	due       time.Time // the deadline of the write under way; zero: none
}

// wire is a listener's transport as its delivery loop (listener.serve)
// sees it: how it waits for the next message, and how it writes. What it
// writes for a message, the listener's encoding decides.
type wire interface {
	// next returns the next message after the listener's position, and
	// whether messages after the position were dropped before it. Without
	// one it returns errGone when the channel has ended, nil when the
	// listener is done (it went away or was answered), or another error
	// that ends the loop (a failed heartbeat, a parked stream).
	next() (m *message, gap bool, err error)

	// write writes d, a message as the listener's encoding made it.
	write(d delivery) error

	// gone tells the listener that the channel ended, and reports whether
	// it counts as ended so (DisconnectCounts.ChannelClosed): when told,
	// and for a WebSocket even if its close handshake then failed.
	gone() (told bool, err error)
}

// serve is the delivery loop of every listener: it takes the next message
// after l.pos from w, encodes it for l's transport, writes it to w and
// counts it as delivered, until w has no more; when the channel ends it
// tells the listener through w. It returns the error that ended the loop,
// if any.
//
// Publish writes to a parked hijacked stream without this loop, but with
// the same encoding (see hstream.push).
func (l *listener) serve(w wire) error {
	for {
		m, gap, err := w.next()
		switch {
		case m != nil:
			if err := l.deliver(w, m, gap); err != nil {
				return err
			}
		case err == errGone:
			told, err := w.gone()
			if told {
				l.hub.stats.gone.Add(1)
			}
			return err
		default:
			return err
		}
	}
}

// deliver writes m, the message after l.pos, to w as l's encoding makes
// it, and counts it once written.
func (l *listener) deliver(w wire, m *message, gap bool) error {
	d := l.encode(m, gap)
	err := w.write(d)
	d.release()
	if err == nil {
		l.delivered(d.gap)
	}
	return err
}

// encode returns what l's transport sends for m, the next message after
// l.pos (gap: messages between them were dropped), and moves l.pos to m.
func (l *listener) encode(m *message, gap bool) delivery {
	var h http.Header
	if l.enc == encLongPoll {
		h = l.w.Header()
	}
	d := l.enc.encode(m, gap, l.pos, h)
	l.pos = m.pos
	return d
}

// delivered counts a message as delivered and, with gap, the gap signalled
// with it.
func (l *listener) delivered(gap bool) {
	if gap {
		l.hub.stats.gaps.Add(1)
	}
	l.hub.stats.deliveries.Add(1)
}

var errGone = errors.New("channel closed")

// waiter is the next method of the wires served on a goroutine of their
// own (all but a hijacked stream): it awaits the next message until done
// is closed, and after each period of silence calls idle, which sends a
// heartbeat (EventSource), a ping (WebSocket), or answers 408 and stops
// (long-poll). With once, it stops after one message (long-poll).
//
// The timer is not reset at each write: when it fires after a write, it is
// set for the rest of the silence, so that a delivery costs no timer
// update.
type waiter struct {
	l      *listener
	done   <-chan struct{}
	period time.Duration
	idle   func() (stop bool, err error)
	once   bool

	t    *time.Timer // nil: no period
	tick <-chan time.Time
	last time.Time // when the last write ended
	sent bool      // next returned a message, which has been written since
}

// start sets the waiter to await on l's behalf until done is closed,
// calling idle after each period of silence (none if period is not
// positive). The caller calls stop when it is done.
func (w *waiter) start(l *listener, done <-chan struct{}, period time.Duration, idle func() (bool, error)) {
	w.l, w.done, w.period, w.idle = l, done, period, idle
	w.last = time.Now() // before the timer starts: it cannot fire within less
	w.t, w.tick = timer(period)
}

func (w *waiter) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

func (w *waiter) next() (*message, bool, error) {
	if w.sent {
		if w.once {
			return nil, false, nil
		}
		w.sent = false
		if w.t != nil {
			w.last = time.Now()
		}
	}
	for {
		m, gap, err := w.l.await(w.done, w.tick)
		switch {
		case err != nil:
			return nil, false, err
		case m != nil:
			w.sent = true
			return m, gap, nil
		}
		select {
		case <-w.done:
			return nil, false, nil
		default:
		}
		if silence := time.Since(w.last); silence < w.period {
			w.t.Reset(w.period - silence)
			continue
		}
		if stop, err := w.idle(); stop || err != nil {
			return nil, false, err
		}
		w.last = time.Now()
		w.t.Reset(w.period)
	}
}

// await returns the next message after l.pos, waiting until one is
// published, expire fires or done is closed (nil, nil), or the channel ends
// (nil, errGone). gap reports that messages between l.pos and m were
// dropped (see chanState.next).
func (l *listener) await(done <-chan struct{}, expire <-chan time.Time) (m *message, gap bool, err error) {
	for {
		m, w, gap, closed := l.ch.next(l.pos)
		switch {
		case closed:
			return nil, false, errGone
		case m != nil:
			return m, gap, nil
		}
		select {
		case <-w.c:
			if m := w.sent(l.pos); m != nil {
				return m, gap, nil
			}
		case <-expire:
			return nil, false, nil
		case <-done:
			return nil, false, nil
		}
	}
}
