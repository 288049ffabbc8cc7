package nchan

import (
	"sync"
	"time"
)

// closedGrace is how long a channel closed by this Client is taken as
// closed whatever the server says: Nchan's memory store answers 200 for
// about 10 s after a DELETE, and a listener that reconnects in that window
// keeps the deleted channel alive.
const closedGrace = 15 * time.Second

// registry is what a Client remembers about channels: which ones it saw open
// recently (so Publish can skip the existence check), which ones it closed
// recently, and which Opens are in flight.
type registry struct {
	mu        sync.Mutex
	known     map[string]knownState
	nextSweep int
	opening   map[string]*openCall
}

type knownState struct {
	open  bool      // seen open; false: closed by this Client
	until time.Time // the state is trusted until then
}

// openCall is an Open in flight; concurrent Opens of the same channel wait
// for it instead of each publishing an empty message on Nchan.
type openCall struct {
	done   chan struct{}
	cursor string
	err    error
}

// state reports whether channel is known open, or known closed, at now.
func (r *registry) state(channel string, now time.Time) (open, closed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.known[channel]
	if !ok || now.After(s.until) {
		return false, false
	}
	return s.open, !s.open
}

func (r *registry) set(channel string, open bool, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.known == nil {
		r.known = make(map[string]knownState)
	}
	if len(r.known) >= r.nextSweep {
		now := time.Now()
		for ch, s := range r.known {
			if now.After(s.until) {
				delete(r.known, ch)
			}
		}
		r.nextSweep = max(1024, 2*len(r.known))
	}
	r.known[channel] = knownState{open: open, until: until}
}

func (r *registry) forget(channel string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.known, channel)
}

// joinOpen returns the Open in flight for channel, or registers a new one
// and reports that the caller leads it.
func (r *registry) joinOpen(channel string) (call *openCall, leader bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.opening[channel]; ok {
		return c, false
	}
	if r.opening == nil {
		r.opening = make(map[string]*openCall)
	}
	c := &openCall{done: make(chan struct{})}
	r.opening[channel] = c
	return c, true
}

func (r *registry) finishOpen(channel string, c *openCall) {
	r.mu.Lock()
	delete(r.opening, channel)
	r.mu.Unlock()
	close(c.done)
}

// knownOpen counts the channels known open at now.
func (r *registry) knownOpen(now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.known {
		if s.open && !now.After(s.until) {
			n++
		}
	}
	return n
}
