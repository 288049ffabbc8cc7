// Package hub is the embedded push relay: channels, their message buffers and
// their listeners, kept in the application's own process and served by its
// own net/http server. A [Hub] implements [relay.Relay] (the publisher side:
// open, publish, inspect, close) and [relay.ListenerServer] (the listener
// side), and answers listeners on the wire as Nchan 1.3.6 does, so that the
// same browser client works with either relay.
//
// # Channels and messages
//
// A channel exists from [Hub.Open] to [Hub.Close]; only open channels take
// messages ([relay.ErrChannelNotFound] otherwise) and listeners (403
// otherwise). Each message gets an ID "<unix-seconds>:<tag>", the tag counting
// from 0 within a second; IDs grow strictly within a channel, even if the
// clock steps back. A channel keeps its newest messages for listeners that
// connect or poll later, up to Options.BufferLength messages, each for
// Options.MessageTTL; expired messages are never delivered and are dropped
// lazily, so a Hub needs no background goroutine. All buffers together hold
// at most Options.MaxBufferedBytes (64 MiB by default): past it, the oldest
// buffered messages of any channel are dropped first, so however many
// channels publishers fill, the hub's memory stays bounded.
//
// # Transports
//
// [Hub.ServeListener] serves one listener. A WebSocket upgrade request
// (Connection: upgrade and Upgrade: websocket) gets a WebSocket; else a
// request whose Accept names text/event-stream gets an EventSource stream;
// any other gets a long-poll. Only GET is allowed (405 with "Allow: GET"
// otherwise).
//
// A listener resumes after a position, taken from the first of: the
// Last-Event-ID header, the last_event_id query parameter (the one browsers
// can set on a WebSocket), and (long-poll only) the If-Modified-Since and
// If-None-Match pair, which carry a message's Last-Modified (its second) and
// Etag (its tag). Without one it gets the messages published after it
// came, as Nchan does with "nchan_subscriber_first_message newest": a new
// page must not replay old notifications, and a listener that must miss
// nothing since a moment passes the cursor of that moment. A position
// older than the buffer starts at the oldest buffered message, and a
// position in the future waits. Every buffered message after the position is delivered
// once, in order. An unparseable position is answered 400; If-None-Match
// alone counts as no position, If-Modified-Since alone is an error, as on
// Nchan. The cursor that [Hub.Open] returns is such a position.
//
// Long-poll answers 200 with one message: its body, its Content-Type (if it
// has one), Last-Modified and Etag. If there is none yet it waits, and
// answers 408 after Options.LongPollTimeout, or 410 if the channel is closed.
//
// EventSource answers 200 with "text/event-stream; charset=utf-8", a ": hi"
// comment at once, then for each message an "event:" line (when the message
// has a name), an "id:" line and one "data:" line per body line, then a
// blank line. A comment line keeps a silent stream alive every
// Options.Heartbeat. When the channel is closed the stream ends with
// ":410: 410 Gone". Over HTTP/1.x the hub takes the connection over from
// net/http (it hijacks it): an idle stream then costs about 5 KiB of process
// memory, a goroutine blocked in a small Read that notices a client going
// away, rather than about 27 KiB for a handler goroutine with net/http's
// buffers; each message is written straight to the idle streams' sockets.
// The response carries "Connection: close" and ends with the connection,
// and ServeListener returns while the stream goes on. Over HTTP/2, or
// behind a ResponseWriter that cannot hijack, the stream is chunked on the
// handler goroutine.
//
// WebSocket, served with github.com/coder/websocket, checks the channel and
// the position as the others do and answers a refusal on the handshake, as
// plain HTTP, before upgrading; it also refuses (403) a page from another
// origin than the request's host unless Options.OriginPatterns allows it.
// Then it sends each message as one frame, the buffered ones first: a
// binary frame when the message's Content-Type is application/octet-stream,
// a text frame otherwise (so a body that is not UTF-8 should be sent as
// application/octet-stream); an empty message is an empty frame. A client
// that asks for Nchan's subprotocol ws+meta.nchan gets each frame as
//
//	id: <id>
//	content-type: <type>
//
//	<body>
//
// without the content-type line when the message has none, so that it can
// resume with ?last_event_id=; other clients get the body alone. A silent
// connection is pinged every Options.Heartbeat, and dropped if the pong does
// not come within Options.WriteTimeout. The client is not expected to send
// messages: one that does is closed with status 1008. When the channel is
// closed the connection is closed with status 1001 and reason "410 Gone".
//
// Every answer carries "Cache-Control: no-store" and "X-Accel-Buffering: no";
// long-poll answers also "Vary: If-None-Match, If-Modified-Since".
//
// # Gaps
//
// The buffer is bounded, so a listener can miss messages: one that resumes
// after a position older than the buffer, or one that falls behind while
// its writes are slow and whose next messages are dropped meanwhile
// (evicted by Options.BufferLength or Options.MaxBufferedBytes, expired by
// Options.MessageTTL, or never buffered when BufferLength is negative). The hub tells such a listener,
// just before the first message it gets after the gap, naming the position
// P ("<sec>:<tag>") of the last message it had:
//
//   - EventSource: an event "event: gap" with "data: P" and no "id:" line
//     (so the browser's Last-Event-ID stays at P);
//   - long-poll: the answer that carries that message has "X-Gap: P";
//   - WebSocket with the subprotocol ws+meta.sessionpush (which the kit's
//     client offers after ws+meta.nchan, and the hub prefers): that
//     message's frame has a line "gap: P" after its "id:" and
//     "content-type:" lines;
//   - WebSocket with ws+meta.nchan: no signal, so that its frames keep
//     exactly Nchan's shape, which Nchan's own client (NchanSubscriber)
//     parses strictly; nor a plain WebSocket (its frames carry only the
//     body).
//
// A listener that starts without a position never gets a gap. The event
// name "gap" is reserved: [Hub.Publish] refuses it ([ErrReservedEvent]).
// Nchan sends no such signal.
//
// # Stats
//
// [Hub.Stats] and [Hub.RelayStats] report, from atomic counters, the open
// channels, the listeners by transport, the messages published and
// delivered, the listeners dropped because a write failed or was too slow,
// the gaps signalled, the listeners the hub ended by reason (slow, failed
// write, channel closed, long-poll timeout, unsupported ResponseWriter) and
// the listeners refused by HTTP status.
//
// # Defaults
//
// The zero [Options] gives Nchan's and nginx's defaults: 10 messages per
// channel kept for one hour, 10 listeners per channel, 1 MiB per message,
// long-polls held 30 seconds, a heartbeat every 15 seconds, and 10 seconds
// for each write to a listener.
//
// # Concurrency
//
// A Hub is safe for concurrent use. Publish holds a channel's lock only to
// append and to wake its listeners, and never waits for them; each listener
// then writes on its own goroutine (an idle hijacked EventSource stream is
// first written to without waiting, and gets a goroutine only if its socket
// does not take the message at once), so a slow or stalled listener delays
// no one else. A listener whose write (or, on WebSocket, whose answer to a
// ping) takes longer than Options.WriteTimeout is disconnected: a listener
// that stops reading is gone within WriteTimeout of the moment its socket
// buffers fill, is counted in Stats.SlowDisconnects and logged at debug
// level ("hub: slow listener disconnected", with channel and transport).
// Listeners read from the channel's buffer, with no queue of their own, so
// memory stays bounded by the buffers however slow they are. Over TLS a
// hijacked stream's write goes to a goroutine of its own, as a TLS write
// cannot be tried without the risk of waiting; on Linux, a message of at
// most 2 KiB to a stream whose socket has sent all it was given (ioctl
// TIOCOUTQ) is written by the dispatch itself, as it cannot wait. A
// write's deadline is cleared once the write is done, and a listener waits
// without one, so an http.Server WriteTimeout shorter than a stream does
// not cut it, nor does HTTP/2, which resets a stream whose write deadline passes even when no
// write is under way (a WebSocket connection or an EventSource stream,
// once hijacked, has no server deadline; each of its writes is bounded by
// its own deadline instead).
//
// [Hub.Shutdown] ends every listener as Close does, refuses new ones (503)
// and every later call ([relay.ErrClosed]), and returns when every
// ServeListener call has returned and every hijacked EventSource stream
// has ended (http.Server.Shutdown does not wait for those). A WebSocket listener returns only once
// its connection is closed and the goroutine that reads it has ended; its
// close handshake takes at most 5 seconds to send the close and 5 to await
// the client's answer, bounds that coder/websocket sets.
package hub
