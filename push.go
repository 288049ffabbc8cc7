package sessionpush

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/sessionpush/sessionpush/relay"
)

// Message is one message to push: a body, its content type and an optional
// EventSource event name.
type Message = relay.Message

// Receipt is the relay's answer to a push.
type Receipt = relay.Receipt

// Errors returned by the push functions; test with errors.Is.
var (
	// ErrChannelNotFound means the channel is not open: never opened
	// by SubscribeHandler, closed, expired, or lost by the relay.
	ErrChannelNotFound = relay.ErrChannelNotFound
	// ErrInvalidChannel means a string is not a channel ID of the kit (a
	// canonical version-4 UUID).
	ErrInvalidChannel = relay.ErrInvalidID
	// ErrMessageTooLarge means a message body exceeds
	// Config.MaxMessageSize; nothing was published.
	ErrMessageTooLarge = relay.ErrMessageTooLarge
	// ErrRelayFull means the relay had no memory left for the message
	// (Nchan's shared memory is full) or the channel; nothing was
	// published. It passes once messages expire: answer 503, not 502.
	ErrRelayFull = relay.ErrRelayFull
)

// Push publishes msg to the open channel id. Data goes only to open
// channels: an unknown or closed channel gives an error wrapping
// ErrChannelNotFound, and a channel that the relay reports gone is removed
// from the store first.
func (m *Manager) Push(ctx context.Context, id string, msg Message) (Receipt, error) {
	if !validChannelID(id) {
		m.pushFailed(pushInvalidID)
		return Receipt{}, fmt.Errorf("sessionpush: push: %w: %q", ErrInvalidChannel, clip(id))
	}
	if err := m.checkSize(msg); err != nil {
		m.pushFailed(pushTooLarge)
		return Receipt{}, fmt.Errorf("sessionpush: push to %s: %w", id, err)
	}
	_, ok, err := m.store.Get(ctx, id)
	if err != nil {
		m.pushFailed(pushStore)
		return Receipt{}, fmt.Errorf("sessionpush: push to %s: store: %w", id, err)
	}
	if !ok {
		m.pushFailed(pushNotFound)
		return Receipt{}, fmt.Errorf("sessionpush: push to %s: %w", id, ErrChannelNotFound)
	}
	return m.publish(ctx, id, msg)
}

// publish hands msg to the relay for a channel the store holds, dropping
// the channel from the store when the relay no longer has it.
func (m *Manager) publish(ctx context.Context, id string, msg Message) (Receipt, error) {
	rc, err := m.relay.Publish(ctx, id, msg)
	if err == nil {
		m.counters.pushes.Add(1)
		return rc, nil
	}
	m.pushFailed(publishFailure(err))
	m.relayFailed(err)
	if errors.Is(err, ErrChannelNotFound) {
		removed, rerr := m.store.Remove(ctx, id)
		if rerr != nil {
			err = errors.Join(err, rerr)
		}
		if removed {
			m.closedChannel(ctx, id, causeLost)
		}
	}
	return Receipt{}, fmt.Errorf("sessionpush: push to %s: %w", id, err)
}

func (m *Manager) checkSize(msg Message) error {
	if len(msg.Body) > m.maxSize {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrMessageTooLarge, len(msg.Body), m.maxSize)
	}
	return nil
}

// encode encodes v as a JSON message within the size limit; a failure
// counts as a failed push.
func (m *Manager) encode(v any) (Message, error) {
	b, err := json.Marshal(v)
	if err != nil {
		m.pushFailed(pushEncode)
		return Message{}, fmt.Errorf("sessionpush: encode message: %w", err)
	}
	msg := Message{Body: b, ContentType: "application/json"}
	if err := m.checkSize(msg); err != nil {
		m.pushFailed(pushTooLarge)
		return Message{}, fmt.Errorf("sessionpush: encode message: %w", err)
	}
	return msg, nil
}

// PushJSON encodes v as JSON and pushes it to the open channel id, as
// [Manager.Push]. A value that encoding/json cannot encode, or whose
// encoding exceeds the size limit, is an error and nothing is published.
func (m *Manager) PushJSON(ctx context.Context, id string, v any) error {
	msg, err := m.encode(v)
	if err != nil {
		return err
	}
	_, err = m.Push(ctx, id, msg)
	return err
}

// PushUser encodes v as JSON and pushes it to every open channel of user
// (one per signed-in session). It returns how many channels received it and
// the failures joined with errors.Join. A user without open channels is not
// an error: the count is 0.
func (m *Manager) PushUser(ctx context.Context, user string, v any) (int, error) {
	msg, err := m.encode(v)
	if err != nil {
		return 0, err
	}
	recs, err := m.store.ByUser(ctx, user)
	if err != nil {
		m.pushFailed(pushStore)
		return 0, fmt.Errorf("sessionpush: push to user %q: store: %w", user, err)
	}
	res, err := m.fanOut(ctx, msg, func(yield func(Record, error) bool) {
		for _, rec := range recs {
			if !yield(rec, nil) {
				return
			}
		}
	})
	return res.Channels, err
}

// BroadcastResult tells what a [Manager.Broadcast] reached.
type BroadcastResult struct {
	// Channels counts the channels that took the message: every open
	// channel that did, or, with Config.BroadcastChannel, 1 for the
	// broadcast channel (0 when the relay does not have it).
	Channels int
	// Listeners counts the listeners connected to those channels when the
	// message was published, as the relay reported them (Nchan and the
	// embedded relay do; the push module reports none).
	Listeners int
}

// Broadcast encodes v as JSON and pushes it to every open channel, with at
// most Config.Concurrency relay requests at once. It returns what the
// message reached and the failures joined with errors.Join; a channel that
// closes meanwhile counts as neither.
//
// With Config.BroadcastChannel set, it publishes once, to the broadcast
// channel. A broadcast channel that the relay does not have (nobody
// subscribed since the relay started) gives a zero result and no error:
// nobody can be listening to it.
func (m *Manager) Broadcast(ctx context.Context, v any) (BroadcastResult, error) {
	msg, err := m.encode(v)
	if err != nil {
		return BroadcastResult{}, err
	}
	if m.broadcast != "" {
		rc, err := m.relay.Publish(ctx, m.broadcast, msg)
		if err == nil {
			m.counters.pushes.Add(1)
			return BroadcastResult{Channels: 1, Listeners: rc.Listeners}, nil
		}
		m.pushFailed(publishFailure(err))
		m.relayFailed(err)
		if errors.Is(err, ErrChannelNotFound) {
			return BroadcastResult{}, nil
		}
		return BroadcastResult{}, fmt.Errorf("sessionpush: broadcast to %s: %w", m.broadcast, err)
	}
	return m.fanOut(ctx, msg, m.store.All(ctx))
}

// fanOut publishes msg to every record of seq with bounded concurrency.
func (m *Manager) fanOut(ctx context.Context, msg Message, seq func(func(Record, error) bool)) (BroadcastResult, error) {
	var (
		sent      atomic.Int64
		listeners atomic.Int64
		mu        sync.Mutex
		errs      []error
		wg        sync.WaitGroup
		sem       = make(chan struct{}, m.concurrency)
	)
	addErr := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for rec, err := range seq {
		if err != nil {
			m.pushFailed(pushStore)
			addErr(fmt.Errorf("sessionpush: list channels: %w", err))
			break
		}
		if ctx.Err() != nil {
			addErr(fmt.Errorf("sessionpush: fan-out stopped: %w", ctx.Err()))
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rc, err := m.publish(ctx, rec.ID, msg)
			switch {
			case err == nil:
				sent.Add(1)
				listeners.Add(int64(rc.Listeners))
			case errors.Is(err, ErrChannelNotFound): // closed meanwhile
			default:
				addErr(err)
			}
		})
	}
	wg.Wait()
	return BroadcastResult{Channels: int(sent.Load()), Listeners: int(listeners.Load())}, errors.Join(errs...)
}

// Exists reports whether the channel id is open: known to the store and to
// the relay. A channel that the store holds but the relay reports gone is
// removed from the store and reported as not existing.
func (m *Manager) Exists(ctx context.Context, id string) (bool, error) {
	if !validChannelID(id) {
		return false, fmt.Errorf("sessionpush: exists: %w: %q", ErrInvalidChannel, clip(id))
	}
	_, ok, err := m.store.Get(ctx, id)
	if err != nil || !ok {
		return false, err
	}
	_, err = m.relay.Info(ctx, id)
	m.relayFailed(err)
	if errors.Is(err, ErrChannelNotFound) {
		removed, err := m.store.Remove(ctx, id)
		if removed {
			m.closedChannel(ctx, id, causeLost)
		}
		return false, err
	}
	if err != nil {
		return false, fmt.Errorf("sessionpush: exists %s: %w", id, err)
	}
	return true, nil
}

// Channel returns the open channel id with its owner, for pushing from code
// that has no request at hand, or an error wrapping ErrChannelNotFound.
func (m *Manager) Channel(ctx context.Context, id string) (*Channel, error) {
	if !validChannelID(id) {
		return nil, fmt.Errorf("sessionpush: %w: %q", ErrInvalidChannel, clip(id))
	}
	rec, ok, err := m.store.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("sessionpush: store get %s: %w", id, err)
	}
	if !ok {
		return nil, fmt.Errorf("sessionpush: %s: %w", id, ErrChannelNotFound)
	}
	return &Channel{ID: rec.ID, User: rec.User, m: m}, nil
}
