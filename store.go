package sessionpush

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sync"
	"time"
)

// Record is what a [Store] keeps of an open channel.
type Record struct {
	ID       string    // channel ID
	User     string    // owner's user ID
	Opened   time.Time // when SubscribeHandler opened it
	LastSeen time.Time // last SubscribeHandler call, or last time listeners were seen
}

// Store remembers the open channels and their owners.
//
// Every method takes a context and may be called concurrently. "Not found"
// is never an error: Get reports it with ok=false, Touch with found=false,
// Remove with removed=false, ByUser with an empty slice. An error means the
// store failed. Times are kept to the millisecond at least; their location
// need not survive.
type Store interface {
	// Add records rec, replacing a record with the same ID.
	Add(ctx context.Context, rec Record) error
	// Get returns the record of channel id.
	Get(ctx context.Context, id string) (rec Record, ok bool, err error)
	// ByUser returns the records of user's channels, in no set order.
	ByUser(ctx context.Context, user string) ([]Record, error)
	// All yields every record once, in no set order. Records added or
	// removed during the iteration may or may not be yielded. An error,
	// such as one wrapping ctx.Err() when ctx ends, is the last value
	// yielded.
	All(ctx context.Context) iter.Seq2[Record, error]
	// Touch sets the LastSeen of channel id to t and reports whether the
	// channel is recorded; it never records a channel that is not.
	Touch(ctx context.Context, id string, t time.Time) (found bool, err error)
	// Remove deletes the record of channel id and reports whether this
	// call removed it, so that of several callers exactly one acts on a
	// removal.
	Remove(ctx context.Context, id string) (removed bool, err error)
}

// MemoryStore is a [Store] in process memory, for a single application
// instance. Its zero value is not ready: use [NewMemoryStore].
type MemoryStore struct {
	mu     sync.RWMutex
	byID   map[string]Record
	byUser map[string]map[string]struct{}
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{byID: map[string]Record{}, byUser: map[string]map[string]struct{}{}}
}

// Add implements [Store].
func (s *MemoryStore) Add(_ context.Context, rec Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byID[rec.ID]; ok {
		s.unindex(old)
	}
	s.byID[rec.ID] = rec
	ids := s.byUser[rec.User]
	if ids == nil {
		ids = map[string]struct{}{}
		s.byUser[rec.User] = ids
	}
	ids[rec.ID] = struct{}{}
	return nil
}

func (s *MemoryStore) unindex(rec Record) {
	ids := s.byUser[rec.User]
	delete(ids, rec.ID)
	if len(ids) == 0 {
		delete(s.byUser, rec.User)
	}
}

// Get implements [Store].
func (s *MemoryStore) Get(_ context.Context, id string) (Record, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	rec, ok := s.byID[id]
	return rec, ok, nil
}

// ByUser implements [Store].
func (s *MemoryStore) ByUser(_ context.Context, user string) ([]Record, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	recs := make([]Record, 0, len(s.byUser[user]))
	for id := range s.byUser[user] {
		recs = append(recs, s.byID[id])
	}
	return recs, nil
}

// All implements [Store]. It yields a snapshot taken when the iteration
// starts, so the loop body may call the store.
func (s *MemoryStore) All(ctx context.Context) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		s.mu.RLock()
		recs := slices.Collect(maps.Values(s.byID))
		s.mu.RUnlock()
		for _, rec := range recs {
			if err := ctx.Err(); err != nil {
				yield(Record{}, err)
				return
			}
			if !yield(rec, nil) {
				return
			}
		}
	}
}

// Touch implements [Store].
func (s *MemoryStore) Touch(_ context.Context, id string, t time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.byID[id]
	if ok {
		rec.LastSeen = t
		s.byID[id] = rec
	}
	return ok, nil
}

// Remove implements [Store].
func (s *MemoryStore) Remove(_ context.Context, id string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.byID[id]
	if ok {
		delete(s.byID, id)
		s.unindex(rec)
	}
	return ok, nil
}

// Len returns the number of recorded channels; it implements [LenStore].
func (s *MemoryStore) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byID)
}

// ExpireIdle closes every channel that has been idle longer than
// Config.IdleTimeout: not seen by SubscribeHandler for that long and,
// according to the relay, without listeners and not requested for that long
// either. A channel that still has listeners is touched instead. It returns
// how many channels this call closed; with a shared store, of several
// instances exactly one closes each channel.
func (m *Manager) ExpireIdle(ctx context.Context) (int, error) {
	if m.idle < 0 {
		return 0, nil
	}
	now := m.now()
	var (
		closed int
		errs   []error
	)
	for rec, err := range m.store.All(ctx) {
		if err != nil {
			errs = append(errs, fmt.Errorf("sessionpush: expire: list channels: %w", err))
			break
		}
		if now.Sub(rec.LastSeen) <= m.idle {
			continue
		}
		info, err := m.relay.Info(ctx, rec.ID)
		m.relayFailed(err)
		switch {
		case err == nil && (info.Listeners > 0 || info.SinceRequest >= 0 && info.SinceRequest < m.idle):
			if _, err := m.store.Touch(ctx, rec.ID, now); err != nil {
				errs = append(errs, fmt.Errorf("sessionpush: expire: touch %s: %w", rec.ID, err))
			}
			continue
		case err != nil && !errors.Is(err, ErrChannelNotFound):
			errs = append(errs, fmt.Errorf("sessionpush: expire: info %s: %w", rec.ID, err))
			continue
		}
		removed, err := m.store.Remove(ctx, rec.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("sessionpush: expire: remove %s: %w", rec.ID, err))
			continue
		}
		if !removed {
			continue // another instance got there first
		}
		m.closedChannel(ctx, rec.ID, causeExpired)
		if err := m.relay.Close(ctx, rec.ID); err != nil && !errors.Is(err, ErrChannelNotFound) {
			m.relayFailed(err)
			errs = append(errs, fmt.Errorf("sessionpush: expire: close %s: %w", rec.ID, err))
			continue
		}
		closed++
	}
	return closed, errors.Join(errs...)
}

// Run calls ExpireIdle periodically (a quarter of Config.IdleTimeout, from
// one second to one minute) until ctx is done, then returns ctx.Err().
// Failures are logged. It starts no other goroutine; with IdleTimeout
// negative it just waits for ctx.
func (m *Manager) Run(ctx context.Context) error {
	if m.idle < 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	t := time.NewTicker(min(max(m.idle/4, time.Second), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if _, err := m.ExpireIdle(ctx); err != nil && ctx.Err() == nil {
				m.log.Error("sessionpush: expiring idle channels", "err", err)
			}
		}
	}
}
