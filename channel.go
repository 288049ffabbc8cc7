package sessionpush

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Channel is a push channel bound to a signed-in session.
type Channel struct {
	// ID is the channel ID: a canonical UUID in version 4 form.
	ID string
	// User is the ID of the user who owns the channel.
	User string

	m *Manager
}

// Push publishes msg to the channel, as [Manager.Push].
func (c *Channel) Push(ctx context.Context, msg Message) (Receipt, error) {
	return c.m.Push(ctx, c.ID, msg)
}

// PushJSON publishes v, encoded as JSON, to the channel, as
// [Manager.PushJSON].
func (c *Channel) PushJSON(ctx context.Context, v any) error {
	return c.m.PushJSON(ctx, c.ID, v)
}

type ctxKey int

const channelKey ctxKey = 0

// NewContext returns a copy of ctx that carries ch, for code below HTTP and
// for tests.
func NewContext(ctx context.Context, ch *Channel) context.Context {
	return context.WithValue(ctx, channelKey, ch)
}

// FromContext returns the channel that ctx carries, if any.
func FromContext(ctx context.Context) (*Channel, bool) {
	ch, ok := ctx.Value(channelKey).(*Channel)
	return ch, ok && ch != nil
}

// CurrentChannel returns the channel of r's signed-in session, or nil when
// nobody is signed in or the Middleware did not run.
func CurrentChannel(r *http.Request) *Channel {
	ch, _ := FromContext(r.Context())
	return ch
}

// validChannelID reports whether id is a canonical, lower-case UUID of
// version 4 form, the only channel IDs the kit hands out.
func validChannelID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		case 14:
			if c != '4' {
				return false
			}
		case 19:
			if c != '8' && c != '9' && c != 'a' && c != 'b' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// SignOut signs the session's channel out (logout): it closes the channel on
// the relay, which ends its listeners, removes it from the store, unbinds it
// from the session and saves the session. Make any other change to the
// session (such as removing the user) before calling SignOut, so that one
// save carries both. A session without a channel is not an error.
func (m *Manager) SignOut(w http.ResponseWriter, r *http.Request) error {
	s, err := m.sessions.Get(r, m.name)
	if s == nil {
		return fmt.Errorf("sessionpush: session: %w", err)
	}
	return errors.Join(m.unbind(r.Context(), s, causeLogout), m.save(w, r, s))
}

// CloseChannel closes the channel id: it removes it from the store and
// deletes it on the relay, which ends its listeners. It returns an error
// wrapping ErrChannelNotFound when neither knew the channel, and for the
// broadcast channel, which it leaves open.
func (m *Manager) CloseChannel(ctx context.Context, id string) error {
	return m.closeChannel(ctx, id, causeClosed)
}

// closeChannel is CloseChannel, counting and logging a close with cause.
func (m *Manager) closeChannel(ctx context.Context, id string, cause closeCause) error {
	if !validChannelID(id) {
		return fmt.Errorf("%w: %q", ErrInvalidChannel, clip(id))
	}
	if m.broadcast != "" && id == m.broadcast {
		return fmt.Errorf("sessionpush: close %s: the broadcast channel is no session channel: %w", id, ErrChannelNotFound)
	}
	removed, err := m.store.Remove(ctx, id)
	if err != nil {
		return fmt.Errorf("sessionpush: store remove %s: %w", id, err)
	}
	if removed {
		m.closedChannel(ctx, id, cause)
	}
	err = m.relay.Close(ctx, id)
	m.relayFailed(err)
	if err == nil || removed && errors.Is(err, ErrChannelNotFound) {
		return nil
	}
	return fmt.Errorf("sessionpush: close %s: %w", id, err)
}
