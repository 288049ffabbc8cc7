package nchan

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// errBadInfo means a 2xx answer did not carry a channel-info body.
var errBadInfo = errors.New("malformed channel info")

// channelInfo is the channel-info body of a GET, POST, PUT or DELETE answer,
// from either server, in any of its formats (see parseInfo).
type channelInfo struct {
	messages    int
	subscribers int
	requested   int // seconds since a subscriber asked, negative if never
	lastID      string
	hasLastID   bool // Nchan reports it; the push module does not
}

// parseInfo reads a channel-info body in any of the formats either server
// produces (plain text, JSON, XML, YAML), whatever its Content-Type says:
// Nchan labels JSON text/json and the push module 0.712 labels it with a
// stray byte after the type. messages and subscribers are required.
func parseInfo(b []byte) (channelInfo, error) {
	s := strings.TrimLeft(string(b), " \t\r\n\ufeff")
	var (
		f   infoFields
		err error
	)
	switch {
	case strings.HasPrefix(s, "{"):
		err = json.Unmarshal([]byte(s), &f)
	case strings.HasPrefix(s, "<"):
		err = xml.Unmarshal([]byte(s), &f)
	default:
		err = f.parseLines(s)
	}
	if err != nil {
		return channelInfo{}, fmt.Errorf("%w: %v", errBadInfo, err)
	}
	return f.check()
}

// infoFields collects the fields under their JSON/XML/YAML names.
type infoFields struct {
	XMLName     xml.Name `json:"-" xml:"channel"`
	Messages    *int     `json:"messages" xml:"messages"`
	Requested   *int     `json:"requested" xml:"requested"`
	Subscribers *int     `json:"subscribers" xml:"subscribers"`
	LastID      *string  `json:"last_message_id" xml:"last_message_id"`

	// Storage for what parseLines points the fields at, saving an
	// allocation per field.
	messages, subscribers, requested int
	lastID                           string
}

// parseLines reads the plain format ("queued messages: 2", "last requested:
// -1 sec. ago", "active subscribers: 0", "last message id: 1795742138:1",
// CRLF) and YAML ("messages: 2", and 0.712's "subscribers 0" without colon).
func (f *infoFields) parseLines(s string) error {
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		if line == "" || line == "---" {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			i := strings.LastIndexByte(line, ' ')
			if i < 0 {
				return fmt.Errorf("line %q has no value", clip(line))
			}
			key, val = line[:i], line[i+1:]
		}
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.TrimSpace(val)
		switch key {
		case "queued messages", "messages":
			n, err := leadingInt(val)
			if err != nil {
				return err
			}
			f.messages = n
			f.Messages = &f.messages
		case "active subscribers", "subscribers":
			n, err := leadingInt(val)
			if err != nil {
				return err
			}
			f.subscribers = n
			f.Subscribers = &f.subscribers
		case "last requested", "requested":
			n, err := leadingInt(val)
			if err != nil {
				return err
			}
			f.requested = n
			f.Requested = &f.requested
		case "last message id", "last_message_id":
			f.lastID = strings.Trim(val, `"'`)
			f.LastID = &f.lastID
		}
	}
	return nil
}

// leadingInt parses the first word of v ("-1 sec. ago (-1=never)" is -1).
func leadingInt(v string) (int, error) {
	word, _, _ := strings.Cut(v, " ")
	n, err := strconv.Atoi(word)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", clip(v))
	}
	return n, nil
}

func (f *infoFields) check() (channelInfo, error) {
	if f.Messages == nil || f.Subscribers == nil {
		return channelInfo{}, fmt.Errorf("%w: no message or subscriber count", errBadInfo)
	}
	ci := channelInfo{messages: *f.Messages, subscribers: *f.Subscribers, requested: -1}
	if ci.messages < 0 || ci.subscribers < 0 {
		return channelInfo{}, fmt.Errorf("%w: negative count", errBadInfo)
	}
	if f.Requested != nil {
		ci.requested = *f.Requested
	}
	if f.LastID != nil {
		if !validLastID(*f.LastID) {
			return channelInfo{}, fmt.Errorf("%w: last message id %q is not <seconds>:<tag>", errBadInfo, clip(*f.LastID))
		}
		ci.lastID, ci.hasLastID = *f.LastID, true
	}
	return ci, nil
}

// validLastID accepts "<seconds>:<tag>" as Nchan reports it: the rule of
// [relay.ParseMessageID], except that the tag may be negative. Nchan 1.3.6
// keeps the tag in 16 bits, and past 32767 messages of one channel within
// one second it turns negative (observed: "1795749072:-30192" when 64
// goroutines published to one channel at about 50,000 messages a second).
func validLastID(s string) bool {
	_, err := relay.ParseMessageID(strings.Replace(s, ":-", ":", 1))
	return err == nil
}

// dying reports an Nchan channel with no buffered message, no subscriber and
// a past message: on the memory store either a channel DELETEd less than
// ~10 s ago (GET still answers 200) or one whose messages expired and that
// is about to be reaped. Neither is open: Info and Publish report it not
// found, Open re-creates it.
func (ci channelInfo) dying() bool {
	return ci.hasLastID && ci.lastID != relay.NoCursor && ci.messages == 0 && ci.subscribers == 0
}

// cursor is the newest message ID: Nchan's last message ID, NoCursor when
// the channel holds no message, or "" when the server holds messages but
// does not say their IDs (push module).
func (ci channelInfo) cursor() string {
	switch {
	case ci.hasLastID:
		return ci.lastID
	case ci.messages == 0:
		return relay.NoCursor
	}
	return ""
}

func (ci channelInfo) relayInfo() relay.Info {
	return relay.Info{
		Messages:      ci.messages,
		Listeners:     ci.subscribers,
		LastMessageID: ci.lastID,
		SinceRequest:  time.Duration(ci.requested) * time.Second,
	}
}

func (ci channelInfo) receipt() relay.Receipt {
	return relay.Receipt{ID: ci.lastID, Listeners: ci.subscribers, Queued: ci.messages}
}

// clip keeps error texts short when they quote server or caller input.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
