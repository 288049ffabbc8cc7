package hub

import (
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// Replicas.
//
// The methods below are the API for relays that share a hub's channels
// through a store, such as package redishub: the store holds each channel,
// its message IDs and its history, and each process keeps a Hub whose
// channels are replicas of the store's, opened while the process has
// listeners for them, to serve those listeners exactly as the hub serves its
// own channels (same transports, same resume positions, same gap signal).
// A replica takes its messages from [Hub.PublishAt] with the IDs that the
// store gave them, never from [Hub.Publish], so that a message has the same
// ID in every process and a listener can resume in any of them.

// OpenReplica opens channel as a replica whose history up to from is gone
// (or never existed, when from is zero): its cursor is from, the messages
// after it come through [Hub.PublishAt], and a listener that resumes before
// from gets the gap signal. It reports false, and changes nothing, if the
// channel is open already. It returns an error wrapping [relay.ErrClosed]
// after Shutdown.
func (h *Hub) OpenReplica(channel string, from relay.MessageID) (bool, error) {
	if err := relay.ValidateID(channel); err != nil {
		return false, opError("open replica", channel, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false, opError("open replica", channel, relay.ErrClosed)
	}
	if h.channels[channel] != nil {
		return false, nil
	}
	h.channels[channel] = &chanState{maxListeners: h.opts.MaxListeners, budget: &h.budget,
		last: from, dropped: from}
	h.stats.channels.Add(1)
	return true, nil
}

// PublishAt appends m to the open channel with the ID id that the store
// gave it, published at published (its Options.MessageTTL counts from
// then), and hands it to the channel's listeners as [Hub.Publish] does. An
// ID that does not follow the channel's newest is ignored and reported
// false: a message that the replica already has, applied twice while it
// catches up with the store, is delivered once. It returns an error
// wrapping [relay.ErrChannelNotFound] if the channel is not open. The
// store has checked m (size, event name) before giving it an ID.
func (h *Hub) PublishAt(channel string, id relay.MessageID, published time.Time, m relay.Message) (bool, error) {
	c, err := h.lookup("publish at", channel)
	if err != nil {
		return false, err
	}
	c.mu.RLock()
	stale := c.last.Compare(id) >= 0
	c.mu.RUnlock()
	if stale {
		return false, nil
	}
	msg := newMessage(m) // outside the lock
	if h.opts.MessageTTL > 0 {
		msg.expires = published.Add(h.opts.MessageTTL)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, opError("publish at", channel, relay.ErrChannelNotFound)
	}
	if c.last.Compare(id) >= 0 {
		c.mu.Unlock()
		return false, nil
	}
	c.label(msg, id)
	h.appendLocked(c, msg, time.Now())
	h.stats.published.Add(1)
	return true, nil
}

// DropUntil records that the channel's messages up to id are gone from the
// store's history (the replica missed them, or the store dropped them):
// buffered messages up to id are dropped, the channel's newest ID becomes at
// least id, and listeners that had not got as far are told of the gap
// before their next message. It returns an error wrapping
// [relay.ErrChannelNotFound] if the channel is not open.
func (h *Hub) DropUntil(channel string, id relay.MessageID) error {
	c, err := h.lookup("drop until", channel)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return opError("drop until", channel, relay.ErrChannelNotFound)
	}
	if c.dropped.Compare(id) >= 0 {
		return nil
	}
	c.dropped = id
	if c.last.Compare(id) < 0 {
		c.last = id
	}
	n := 0
	for n < len(c.msgs) && c.msgs[n].pos.Compare(id) <= 0 {
		c.budget.remove(c.msgs[n])
		n++
	}
	if n > 0 {
		k := copy(c.msgs, c.msgs[n:])
		clear(c.msgs[k:])
		c.msgs = c.msgs[:k]
	}
	for _, s := range c.parked {
		if s.l.pos.Compare(id) < 0 {
			s.gap = true
		}
	}
	// Waiting listeners wake without a message, and look again: they find
	// the gap.
	if w := c.wake; w != nil {
		c.wake = nil
		close(w.c)
	}
	return nil
}

// SetListenerLimit sets how many more listeners the open channel admits in
// all, taken as is: n listeners at most, none when n is zero, no cap when n
// is negative. A relay whose channels have listeners in several processes
// sets it to the channel's cap less the listeners elsewhere. Listeners
// already in are never ended. It returns an error wrapping
// [relay.ErrChannelNotFound] if the channel is not open.
func (h *Hub) SetListenerLimit(channel string, n int) error {
	c, err := h.lookup("set listener limit", channel)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return opError("set listener limit", channel, relay.ErrChannelNotFound)
	}
	c.maxListeners = n
	return nil
}

// ListenerCount returns the open channel's listeners and when one last
// connected (zero if none ever did), or ok false if the channel is not
// open.
func (h *Hub) ListenerCount(channel string) (n int, requested time.Time, ok bool) {
	h.mu.RLock()
	c := h.channels[channel]
	h.mu.RUnlock()
	if c == nil {
		return 0, time.Time{}, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.listeners, c.requested, !c.closed
}

// CloseUnlistened closes the open channel as [Hub.Close] does, but only if
// it has no listener, and reports whether it did: a replica that nobody in
// the process listens to any more is closed without ending anyone.
func (h *Hub) CloseUnlistened(channel string) bool {
	h.mu.Lock()
	c := h.channels[channel]
	if c == nil {
		h.mu.Unlock()
		return false
	}
	c.mu.RLock()
	idle := c.listeners == 0
	c.mu.RUnlock()
	if !idle {
		h.mu.Unlock()
		return false
	}
	delete(h.channels, channel)
	h.stats.channels.Add(-1)
	h.mu.Unlock()
	c.close()
	return true
}

// takeParked takes the parked streams whose position is before id, the
// message being appended, to hand it to them, and leaves parked those whose
// position is id or after it. Those are only found on a replica: a
// listener that resumes in this process from a message that it had from
// another one, before this replica applied it, is parked at once, and the
// messages up to its position, as they come through [Hub.PublishAt], are
// not for it (a listener waiting on the channel's wake skips them too, see
// wake.sent). Unless such a stream may be parked (c.parkedAhead), it takes
// them all without looking. The caller holds c.mu for writing.
func (c *chanState) takeParked(id relay.MessageID) []*hstream {
	parked := c.parked
	if c.parkedAhead.Compare(id) < 0 { // every parked stream is before id
		c.parkedAhead = relay.MessageID{}
		c.parked = nil
		return parked
	}
	ahead := 0
	for _, s := range parked {
		if s.l.pos.Compare(id) >= 0 {
			ahead++
		}
	}
	if ahead == 0 {
		c.parked = nil
		return parked
	}
	// Publish and close take the whole slice, and the streams left keep
	// theirs: a new one, whose slots are renumbered (see hstream.unpark).
	keep := make([]*hstream, 0, ahead)
	taken := parked[:0]
	for _, s := range parked {
		if s.l.pos.Compare(id) >= 0 {
			s.slot = len(keep)
			keep = append(keep, s)
		} else {
			taken = append(taken, s)
		}
	}
	clear(parked[len(taken):])
	c.parked = keep
	if len(taken) == 0 {
		return nil
	}
	return taken
}
