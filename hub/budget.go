package hub

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sessionpush/sessionpush/relay"
)

// messageOverhead is what a buffered message costs besides its bytes: the
// message struct, its ID strings and its place in a channel's buffer,
// rounded up. The budget counts it so that many tiny messages are bounded
// too.
const messageOverhead = 256

// budget holds every buffered message of a Hub in a list, oldest first, and
// the bytes they hold, so that Options.MaxBufferedBytes can be kept by
// evicting the oldest message of all channels.
//
// Locks: a channel's mu may be held when budget.mu is taken, never the
// other way round. A message leaves the list exactly once, by unlink: when
// its channel drops it (buffer length, expiry, close) or when evict picks
// it; evict then removes it from its channel after letting go of budget.mu.
type budget struct {
	max int64 // negative: no cap

	mu         sync.Mutex
	head, tail *message // oldest, newest

	bytes     atomic.Int64 // held by the messages in the list
	evictions atomic.Uint64
}

// add appends m, just buffered on c, to the list. The caller holds c.mu.
func (b *budget) add(c *chanState, m *message) {
	m.ch = c
	b.mu.Lock()
	m.prev, m.linked = b.tail, true
	if b.tail != nil {
		b.tail.next = m
	} else {
		b.head = m
	}
	b.tail = m
	b.mu.Unlock()
	b.bytes.Add(m.size)
}

// remove takes m out of the list, if it is still there; its channel has
// dropped it. The caller holds that channel's mu.
func (b *budget) remove(m *message) {
	b.mu.Lock()
	ok := b.unlink(m)
	b.mu.Unlock()
	if ok {
		b.bytes.Add(-m.size)
	}
}

// unlink takes m out of the list and reports whether it was there. The
// caller holds b.mu.
func (b *budget) unlink(m *message) bool {
	if !m.linked {
		return false
	}
	if m.prev != nil {
		m.prev.next = m.next
	} else {
		b.head = m.next
	}
	if m.next != nil {
		m.next.prev = m.prev
	} else {
		b.tail = m.prev
	}
	m.prev, m.next, m.linked = nil, nil, false
	return true
}

// evict drops the oldest buffered messages, whatever their channel, until
// the list holds at most b.max bytes. A listener that had not had an
// evicted message is told of the gap, as for any message its channel
// dropped. The caller holds no lock.
func (b *budget) evict() {
	if b.max < 0 {
		return
	}
	for b.bytes.Load() > b.max {
		b.mu.Lock()
		m := b.head
		if m == nil || !b.unlink(m) {
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.bytes.Add(-m.size)
		b.evictions.Add(1)
		m.ch.evicted(m)
	}
}

// evicted removes m, which the budget evicted, from the channel's buffer,
// with any older message still there: those left the budget's list before
// m did (the list's order within a channel is the buffer's), to an
// eviction still on its way here.
func (c *chanState) evicted(m *message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, found := slices.BinarySearchFunc(c.msgs, m.pos, func(x *message, id relay.MessageID) int {
		return x.pos.Compare(id)
	})
	if !found || c.msgs[i] != m {
		return // the channel dropped it meanwhile
	}
	c.dropped = m.pos
	n := copy(c.msgs, c.msgs[i+1:])
	clear(c.msgs[n:])
	c.msgs = c.msgs[:n]
}
