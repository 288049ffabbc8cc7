package hub

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/sessionpush/sessionpush/relay"
)

// This file decides what goes on the wire for a message and for a gap, for
// every transport (see the package documentation); the delivery paths (see
// listener.serve and hstream.push) only write what encode returns.

// The gap signal, as each transport spells it.
const (
	// gapEvent names the EventSource event that signals a gap; Publish
	// refuses messages so named (ErrReservedEvent).
	gapEvent = "gap"

	// gapHeader is the long-poll header that signals a gap.
	gapHeader = "X-Gap"

	// gapLine starts the line of a ws+meta.sessionpush frame that signals
	// a gap.
	gapLine = "gap: "
)

// The EventSource comments: the first write of a stream, the heartbeat and
// the end of a closed channel.
var (
	hello     = []byte(": hi\n\n")
	heartbeat = []byte(": \n\n")
	gone      = []byte(":410: 410 Gone\n\n")
)

// binaryType is the message Content-Type sent as binary WebSocket frames;
// every other message is a text frame, as on Nchan.
const binaryType = "application/octet-stream"

// encoding is how a listener's transport puts a message on the wire.
type encoding uint8

const (
	encEventSource   encoding = iota // an EventSource event, after a "gap" event
	encLongPoll                      // a long-poll answer: its headers, with X-Gap, and the body
	encWebSocket                     // a WebSocket frame with the body alone: no gap signal
	encWebSocketMeta                 // ws+meta.nchan: Nchan's frame, no gap signal
	encWebSocketGap                  // ws+meta.sessionpush: Nchan's frame with a "gap:" line
)

// delivery is what an encoding makes of one message: what its transport
// writes.
type delivery struct {
	b      []byte  // EventSource: the event(s); long-poll: the body; WebSocket: the frame's payload
	binary bool    // WebSocket: a binary frame, else text
	gap    bool    // it signals a gap (Stats.Gaps)
	buf    *[]byte // the pooled buffer b was built in, if any: see release
}

// encode returns what e sends for m to a listener whose last message was at
// pos; gap reports that messages after pos were dropped before m. The
// delivery signals the gap when e can (EventSource, long-poll,
// ws+meta.sessionpush). For long-poll it sets the answer's headers in h;
// the other encodings do not use h.
//
// b is m's own bytes, which no one may change, or, for a frame built for
// this write, a pooled buffer that release gives back once it is written.
func (e encoding) encode(m *message, gap bool, pos relay.MessageID, h http.Header) delivery {
	switch e {
	case encEventSource:
		if !gap {
			return delivery{b: m.frame}
		}
		d := delivery{gap: true, buf: frameBufs.Get().(*[]byte)}
		d.b = append(appendGapEvent((*d.buf)[:0], pos), m.frame...)
		return d
	case encLongPoll:
		if m.contentType != "" {
			h.Set("Content-Type", m.contentType)
		} else {
			h["Content-Type"] = nil // no sniffed type: Nchan sends none
		}
		h.Set("Content-Length", m.length)
		h.Set("Last-Modified", m.modified)
		h.Set("Etag", m.etag)
		if gap {
			h.Set(gapHeader, pos.String())
		}
		return delivery{b: m.body, gap: gap}
	}
	d := delivery{b: m.body, binary: m.contentType == binaryType}
	if e == encWebSocket {
		return d // its frames carry the body alone: no way to tell
	}
	var after *relay.MessageID
	if gap && e == encWebSocketGap { // ws+meta.nchan keeps Nchan's exact shape
		after, d.gap = &pos, true
	}
	d.buf = frameBufs.Get().(*[]byte)
	d.b = appendMetaFrame((*d.buf)[:0], m, after)
	return d
}

// release gives the buffer that d was built in back to the pool, once d is
// written. A buffer that grew past maxPooledFrame is left to the garbage
// collector.
func (d *delivery) release() {
	if d.buf != nil && cap(d.b) <= maxPooledFrame {
		*d.buf = d.b[:0]
		frameBufs.Put(d.buf)
	}
}

// frameBufs holds the buffers that frames are built in for one write (a
// ws+meta frame, an event after a gap event), so that no message holds a
// second copy of its body.
var frameBufs = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledFrame = 64 << 10

// appendGapEvent appends the EventSource event that tells a listener at pos
// that messages after it were dropped: named "gap", pos as data, and no
// "id:" line, so that the browser's Last-Event-ID stays at pos.
func appendGapEvent(dst []byte, pos relay.MessageID) []byte {
	dst = append(dst, "event: "+gapEvent+"\ndata: "...)
	dst = append(dst, pos.String()...)
	return append(dst, "\n\n"...)
}

// appendMetaFrame appends m as a ws+meta.nchan frame: "id: <id>\n", then
// "content-type: <type>\n" if m has one, then, when gap is not nil (only for
// ws+meta.sessionpush), the hub's "gap: <gap>\n" line, a blank line and the
// body. CR and LF in the Content-Type become spaces, as net/http writes
// them in headers, so that it cannot add lines.
func appendMetaFrame(dst []byte, m *message, gap *relay.MessageID) []byte {
	dst = append(append(dst, "id: "...), m.id...)
	if m.contentType != "" {
		dst = append(dst, "\ncontent-type: "...)
		at := len(dst)
		dst = append(dst, m.contentType...)
		for i := at; i < len(dst); i++ {
			if dst[i] == '\r' || dst[i] == '\n' {
				dst[i] = ' '
			}
		}
	}
	if gap != nil {
		dst = append(append(append(dst, '\n'), gapLine...), gap.String()...)
	}
	return append(append(dst, "\n\n"...), m.body...)
}

// maxIDLine is the longest "id:" line of an EventSource event.
const maxIDLine = len("id: 9223372036854775807:9223372036854775807\n")

// newMessage copies m's body and prepares its EventSource event, in one
// allocation: room for the event and id lines that setID writes
// (len(eventLine)+maxIDLine bytes), then the data lines. A body without
// line breaks is one data line, and the message keeps it there, as a slice
// of the frame; a body with line breaks is kept as sent too, before the
// frame.
func newMessage(m relay.Message) *message {
	msg := &message{contentType: m.ContentType, length: strconv.Itoa(len(m.Body))}
	if m.Event != "" {
		msg.eventLine = "event: " + m.Event + "\n"
	}
	dataAt := len(msg.eventLine) + maxIDLine
	b := len(m.Body)
	if bytes.IndexByte(m.Body, '\n') < 0 && bytes.IndexByte(m.Body, '\r') < 0 {
		buf := make([]byte, dataAt, dataAt+len("data: ")+b+len("\n\n"))
		buf = append(buf, "data: "...)
		at := len(buf)
		msg.frame = append(append(buf, m.Body...), "\n\n"...)
		msg.body = msg.frame[at : at+b : at+b]
		msg.size = int64(cap(buf)) + messageOverhead
		return msg
	}
	breaks := bytes.Count(m.Body, []byte{'\n'}) + bytes.Count(m.Body, []byte{'\r'})
	buf := make([]byte, b+dataAt, 2*b+dataAt+(breaks+1)*len("data: \n")+1)
	msg.body = buf[:copy(buf, m.Body):b]
	msg.frame = appendData(buf, m.Body)[b:]
	msg.size = int64(cap(buf)) + messageOverhead
	return msg
}

// setID gives m its ID, and completes its EventSource event: its event
// and id lines, in the room that newMessage left before the data lines.
func (m *message) setID(id relay.MessageID) {
	var line [maxIDLine]byte
	b := append(line[:0], "id: "...)
	b = strconv.AppendInt(b, id.Time, 10)
	b = append(strconv.AppendInt(append(b, ':'), id.Tag, 10), '\n')
	start := maxIDLine - len(b) // frame holds len(eventLine)+maxIDLine bytes before the data lines
	copy(m.frame[start:], m.eventLine)
	copy(m.frame[start+len(m.eventLine):], b)
	m.frame = m.frame[start:]
	m.id = string(b[4 : len(b)-1])
	m.etag = m.id[strings.IndexByte(m.id, ':')+1:]
	m.pos = id
}

// appendData appends body as EventSource data lines and the blank line that
// ends the event. Lines end at LF, CRLF or CR, as EventSource parsers split
// them, so no body can end an event early or forge a field.
func appendData(dst, body []byte) []byte {
	next := func(b []byte) int { return bytes.IndexByte(b, '\n') } // the common case, fast
	if bytes.IndexByte(body, '\r') >= 0 {
		next = func(b []byte) int { return bytes.IndexAny(b, "\r\n") }
	}
	for {
		i := next(body)
		if i < 0 {
			break
		}
		dst = append(append(append(dst, "data: "...), body[:i]...), '\n')
		if body[i] == '\r' && i+1 < len(body) && body[i+1] == '\n' {
			i++
		}
		body = body[i+1:]
	}
	dst = append(append(append(dst, "data: "...), body...), '\n')
	return append(dst, '\n')
}
