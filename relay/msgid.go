package relay

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalidMessageID means a message ID (a cursor, a Last-Event-ID, or a
// long-poll If-Modified-Since / If-None-Match pair) could not be parsed.
var ErrInvalidMessageID = errors.New("relay: invalid message id")

// MessageID identifies a message within a channel, as Nchan and the push
// module do: the second it was published and a tag counting from 0 within
// that second. IDs of one channel increase with every message.
type MessageID struct {
	Time int64 // Unix seconds
	Tag  int64 // order within Time, from 0
}

// String formats id as "<unix-seconds>:<tag>".
func (id MessageID) String() string {
	return strconv.FormatInt(id.Time, 10) + ":" + strconv.FormatInt(id.Tag, 10)
}

// Compare returns -1, 0 or +1 as id is older than, the same as, or newer
// than o.
func (id MessageID) Compare(o MessageID) int {
	switch {
	case id.Time < o.Time:
		return -1
	case id.Time > o.Time:
		return 1
	case id.Tag < o.Tag:
		return -1
	case id.Tag > o.Tag:
		return 1
	}
	return 0
}

// ParseMessageID parses "<unix-seconds>:<tag>" with both parts non-negative
// decimal integers. The error wraps [ErrInvalidMessageID].
func ParseMessageID(s string) (MessageID, error) {
	t, tag, ok := strings.Cut(s, ":")
	if !ok {
		return MessageID{}, fmt.Errorf("%w: %q has no ':'", ErrInvalidMessageID, clip(s))
	}
	sec, err1 := parseNonNegative(t)
	n, err2 := parseNonNegative(tag)
	if err1 != nil || err2 != nil {
		return MessageID{}, fmt.Errorf("%w: %q is not <seconds>:<tag>", ErrInvalidMessageID, clip(s))
	}
	return MessageID{Time: sec, Tag: n}, nil
}

func parseNonNegative(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, ErrInvalidMessageID
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, ErrInvalidMessageID
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// clip keeps error texts short when they quote client input.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
