package nchan

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/sessionpush/sessionpush/relay"
)

// ErrEmptyMessage means the server refuses to publish a message with an
// empty body: the push module 0.712 answers such a POST with 500. Nchan
// publishes empty messages. A [Client] returns it without sending anything
// once it knows that it talks to the push module (a PUT answered 200, or an
// earlier empty publish answered 500).
var ErrEmptyMessage = errors.New("nchan: the push module refuses empty messages")

// Error describes a failed call of a [Client]. It wraps [relay.ErrChannelNotFound],
// [relay.ErrMessageTooLarge], [relay.ErrRelayFull] (Nchan's shared memory
// is full: it answered a PUT or POST with 507, or 500),
// [relay.ErrInvalidID] or [ErrEmptyMessage] when
// one applies, the context's error when the deadline passed or the context
// was cancelled, or the transport's error; test them with [errors.Is].
type Error struct {
	// Op is the method: "open", "publish", "info" or "close".
	Op string
	// Channel is the channel ID as the caller gave it.
	Channel string
	// Status is the last HTTP status the server answered (so a 503 that
	// lasted until the deadline is 503 here), or 0 if no answer came.
	Status int
	// Err is the cause, or nil when the status says it all.
	Err error
}

// Error formats e like `nchan: publish "abc": 503 Service Unavailable:
// context deadline exceeded`.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("nchan: ")
	b.WriteString(e.Op)
	b.WriteByte(' ')
	b.WriteString(strconv.Quote(clip(e.Channel)))
	if e.Status != 0 {
		b.WriteString(": ")
		b.WriteString(strconv.Itoa(e.Status))
		if text := http.StatusText(e.Status); text != "" {
			b.WriteByte(' ')
			b.WriteString(text)
		}
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns e.Err.
func (e *Error) Unwrap() error { return e.Err }

// errBadHeader means a message's content type or event name cannot be sent
// as a header.
var errBadHeader = errors.New("invalid message header")

// statusError reports an answer of status that the call does not expect;
// 507 (Nchan out of shared memory) wraps [relay.ErrRelayFull].
func statusError(op, channel string, status int) error {
	e := &Error{Op: op, Channel: channel, Status: status}
	if status == http.StatusInsufficientStorage {
		e.Err = relay.ErrRelayFull
	}
	return e
}

// storeError reports an unexpected answer to a PUT or POST, which store a
// message: Nchan 1.3.6 answers 507 when the message would take it past its
// shared memory, and 500 when allocating it failed (its error log says "Out
// of shared memory"); both wrap [relay.ErrRelayFull]. (An empty POST that the
// push module refuses with 500 is told apart before.)
func storeError(op, channel string, status int) error {
	if status == http.StatusInternalServerError {
		return &Error{Op: op, Channel: channel, Status: status, Err: relay.ErrRelayFull}
	}
	return statusError(op, channel, status)
}

func notFound(op, channel string, status int) error {
	return &Error{Op: op, Channel: channel, Status: status, Err: relay.ErrChannelNotFound}
}
