// Package relay defines the contract between sessionpush and a push relay:
// the [Relay] interface, the values it exchanges, its sentinel errors and the
// validation of channel IDs.
//
// It holds no implementation, so that the kit, the embedded relay
// (package hub), the Nchan client (package nchan) and test helpers can all
// depend on it without import cycles.
package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Relay is a push relay reached through its publisher side: the four verbs
// of the push relay protocol (create, publish, inspect, delete a channel).
//
// Every method honours the deadline and cancellation of its context and is
// safe for concurrent use. Implementations validate channel IDs with
// [ValidateID] before using them.
type Relay interface {
	// Open creates the channel, or keeps it if it exists, and returns a
	// cursor: the ID of the newest message at the moment of opening,
	// [NoCursor] when the channel holds none, or "" when the relay cannot
	// tell (the push module reports no IDs). A listener that resumes from
	// the cursor receives every message published after Open returned.
	// A relay that has no memory left to open it returns an error
	// wrapping [ErrRelayFull].
	Open(ctx context.Context, channel string) (cursor string, err error)

	// Publish appends m to the channel's buffer and hands it to every
	// listener. It returns an error wrapping [ErrChannelNotFound] when the
	// channel is not open, [ErrMessageTooLarge] when m exceeds the
	// relay's size limit and [ErrRelayFull] when the relay has no memory
	// left for it; nothing is published then.
	Publish(ctx context.Context, channel string, m Message) (Receipt, error)

	// Info reports on an open channel, or returns an error wrapping
	// [ErrChannelNotFound].
	Info(ctx context.Context, channel string) (Info, error)

	// Close deletes the channel and its buffer and ends its listeners.
	// It returns an error wrapping [ErrChannelNotFound] if the channel
	// was not open.
	Close(ctx context.Context, channel string) error
}

// MaxListenersSetter is implemented by relays whose cap of listeners per
// channel can be changed for one open channel, as the embedded relay's
// (hub.Hub) can. The kit lifts the cap of its broadcast channel through it.
type MaxListenersSetter interface {
	// SetMaxListeners sets the cap of the open channel's listeners: n at
	// most, none when n is negative, the relay's default when n is zero.
	// It returns an error wrapping [ErrChannelNotFound] if the channel is
	// not open.
	SetMaxListeners(channel string, n int) error
}

// ListenerServer is implemented by relays that serve listeners in the
// application's own process, such as the embedded relay. The kit finds it by
// type assertion on a [Relay].
type ListenerServer interface {
	// ServeListener serves one listener of channel on w. The caller has
	// already decided that the request may listen to channel. It may return
	// while the listener goes on, on a connection it took over from
	// net/http (http.Hijacker); the relay's own shutdown then ends it.
	ServeListener(w http.ResponseWriter, r *http.Request, channel string)
}

// Message is one message published to a channel.
type Message struct {
	// Body is delivered as is. It may be empty.
	Body []byte
	// ContentType is the media type of Body, given to long-poll listeners
	// as their Content-Type and to WebSocket listeners in ws+meta.nchan
	// frames; application/octet-stream makes a binary WebSocket frame.
	// Empty means none is sent.
	ContentType string
	// Event names the message for EventSource listeners ("event:" line).
	// Empty means an unnamed message. It must not contain CR or LF.
	Event string
}

// Receipt is the relay's answer to a publish.
type Receipt struct {
	// ID is the message ID ("<unix-seconds>:<tag>"), or empty if the
	// relay does not report it.
	ID string
	// Listeners is the number of listeners connected when the message
	// was published, as the relay counts them.
	Listeners int
	// Queued is the number of messages buffered in the channel after the
	// publish.
	Queued int
}

// Info describes an open channel.
type Info struct {
	// Messages is the number of buffered messages.
	Messages int
	// Listeners is the number of listeners connected now.
	Listeners int
	// LastMessageID is the ID of the newest message, [NoCursor] if the
	// channel has none, or empty if the relay does not report it.
	LastMessageID string
	// SinceRequest is the time since a listener last asked for the
	// channel, or a negative duration if none ever did.
	SinceRequest time.Duration
}

// NoCursor is the cursor of a channel that has no message yet; resuming from
// it delivers everything. It is what Nchan reports as the last message ID of
// an empty channel.
const NoCursor = "0:0"

// Sentinel errors. Implementations wrap them with the channel and cause, so
// test with [errors.Is].
var (
	// ErrChannelNotFound means the channel is not open on the relay.
	ErrChannelNotFound = errors.New("relay: channel not found")
	// ErrInvalidID means a channel ID failed [ValidateID] (or a stricter
	// rule of the caller).
	ErrInvalidID = errors.New("relay: invalid channel id")
	// ErrMessageTooLarge means a message exceeds the relay's size limit.
	ErrMessageTooLarge = errors.New("relay: message too large")
	// ErrTooManyListeners means a channel has as many listeners as its
	// cap allows.
	ErrTooManyListeners = errors.New("relay: too many listeners on channel")
	// ErrClosed means the relay has been shut down.
	ErrClosed = errors.New("relay: closed")
	// ErrRelayFull means the relay is out of the memory it keeps for
	// messages and refused to open a channel or take a message; nothing
	// was published. It is temporary: the relay takes messages again once
	// buffered ones expire or are removed (Nchan answers 507 Insufficient
	// Storage while its shared memory is full). Handlers answer it with 503.
	ErrRelayFull = errors.New("relay: out of memory for messages")
)

// MaxIDLength is the longest channel ID that [ValidateID] accepts. It is
// Nchan's default nchan_max_channel_id_length.
const MaxIDLength = 1024

// ValidateID reports whether id is safe to use as a channel ID on any relay:
// 1 to [MaxIDLength] bytes of ASCII letters, digits, '.', '_' and '-'. Such an
// ID can be placed in a URL path or query unescaped and carries no path
// separator. The error wraps [ErrInvalidID].
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if !idByte(id[i]) {
			return fmt.Errorf("%w: byte %d is outside [A-Za-z0-9._-]", ErrInvalidID, i)
		}
	}
	if id == "." || id == ".." {
		return fmt.Errorf("%w: a path element", ErrInvalidID)
	}
	return nil
}

func idByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}
