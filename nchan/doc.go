// Package nchan is a publisher client for Nchan (nginx module, tested with
// 1.3.6) and for the legacy nginx push module 0.712. [Client] implements
// [relay.Relay] over the publisher endpoint's four verbs: GET (channel
// info), PUT (create), POST (publish) and DELETE (close). Listeners connect
// to nginx directly; this package never talks to the subscriber side.
//
//	c, err := nchan.New("http://127.0.0.1:8080/pub/{channel}", nchan.Options{})
//	cursor, err := c.Open(ctx, id)       // hand the cursor to the listener
//	_, err = c.Publish(ctx, id, relay.Message{Body: b, ContentType: "application/json"})
//	err = c.Close(ctx, id)               // listeners get 410 / end of stream
//
// The publisher location must not be reachable by browsers (allow it from
// 127.0.0.1 only); its subscriber location should say
// `nchan_subscribe_existing_channels_only on`.
//
// # Servers
//
// A Client needs no configuration to tell the servers apart; it goes by
// their answers, as observed on real servers:
//
//   - Open on a missing channel sends an empty PUT. Nchan publishes an empty
//     message (202) and Open returns that message's ID as the cursor, so a
//     listener that resumes from it (Last-Event-ID, ?last_event_id=, or
//     If-Modified-Since + If-None-Match) never sees the empty message. The
//     push module 0.712 creates an empty channel (200) and the cursor is
//     [relay.NoCursor].
//   - The push module does not report message IDs: [relay.Receipt.ID] and
//     [relay.Info.LastMessageID] are empty there, and Open on an existing
//     channel that holds messages returns the cursor "" (unknown).
//   - The push module answers an empty POST with 500; Publish returns
//     [ErrEmptyMessage] (without sending, once the Client has seen the
//     push module's PUT).
//   - Channel info is read in whatever format comes (plain text, JSON, XML,
//     YAML), ignoring Content-Type: Nchan labels JSON text/json and the push
//     module appends a stray byte to the type it echoes. The Client sends no
//     Accept header, so both servers answer text/plain: given
//     "Accept: application/json", 0.712 labels its answer
//     "application/json\x00", a header that Go's HTTP client (like curl)
//     rejects as malformed.
//   - Nchan keeps a message's tag in 16 bits: past 32767 messages to one
//     channel within one second, the tags in receipts and info turn negative
//     ("1795749072:-30192"). They are passed on as they come.
//   - HEAD is never sent: Nchan never answers it.
//
// # Publishing only to open channels
//
// On both servers a POST creates the channel it names, so a POST alone
// cannot report "not open". Publish therefore sends its POST directly only
// to a channel that this Client found open less than [Options.ExistsTTL]
// ago (default 1 s) through Open, Info or an earlier check; otherwise it
// first sends a GET and returns [relay.ErrChannelNotFound] on 404, without
// creating anything. Publishing to a never-opened channel thus never creates
// it. A burst of publishes to one channel costs one GET per second; an
// isolated publish costs a GET and a POST, about twice the time of a POST
// alone (BenchmarkPublish, medians on a shared 2-core machine: 66 µs against
// 37 µs sequentially, 40 µs against 18 µs per publish from 16 goroutines;
// see BENCHMARKS.md). Close forgets the channel at once. What the TTL
// trades: a channel closed by another process, or reaped by Nchan after its
// messages expired, can be re-created by a publish from this Client within
// the TTL after its last check. Set ExistsTTL negative to
// check before every publish; even then a DELETE can slip between the GET
// and the POST.
//
// # Deleted channels
//
// After a DELETE, Nchan's memory store keeps answering GET with 200 for about
// 10 s (`queued messages: 0`, the old last message ID), a listener that
// reconnects in that window is accepted and keeps the channel alive, and a
// POST revives it with message tags that start again from 0. A Client
// therefore treats an Nchan channel with no message, no listener and a last
// message ID other than 0:0 as gone (it is either deleted or about to be
// reaped after its messages expired), and remembers the channels it closed
// itself for 15 s: Info and Publish report them not found, and Open creates
// them again with a PUT and returns the new message's ID. Nchan with Redis
// and the push module answer 404 at once.
//
// # Retries and errors
//
// 503 answers (Nchan not yet connected to Redis) and connection errors
// (refused, reset, EOF) are retried with exponential backoff from 10 ms,
// capped at [Options.MaxRetryWait], with jitter, while the context's
// deadline and [Options.MaxRetryTime] allow. A POST is retried after a
// connection error only when nginx cannot have published it (not completely
// sent, or sent on a reused keep-alive connection that nginx closed without
// answering), so a retry does not publish a message twice (short of an nginx
// worker dying after it read a request on a kept-alive connection). Other statuses
// are not retried. Every error is an [*Error] with the operation, the
// channel, the last status (a 503 that outlived the deadline says 503) and
// the cause, which wraps [relay.ErrChannelNotFound], [relay.ErrMessageTooLarge],
// [relay.ErrInvalidID], [ErrEmptyMessage], or the context's error.
//
// Channel IDs are checked with [relay.ValidateID] before any URL is built,
// and escaped for their place in the URL all the same, so an ID cannot
// change the path or the query. Response bodies are always read and closed,
// so connections are reused.
//
// # Transport
//
// Unless [Options.HTTPClient] is set, a Client sends its requests, to
// http:// and https:// URLs alike, through a transport of its own:
// github.com/valyala/fasthttp writes each request and parses each answer,
// over a pool of keep-alive connections that the Client keeps itself, so
// that it starts no goroutine and knows how far each attempt got, which
// the retry rules need. A publish costs 3 allocations. The request target
// is escaped by construction: the template is written again from its
// parsed parts, so "http://127.0.0.1/pub lish/é/{channel}" sends
// "POST /pub%20lish/%C3%A9/<id> HTTP/1.1", and the target goes out as it
// is, never normalized. An answer whose header lines end with a bare LF is
// refused; one with both Content-Length and Transfer-Encoding is read as
// chunked and its connection is not used again. A DELETE carries
// "Content-Length: 0". With Options.HTTPClient the same requests and retry
// rules go through net/http.
//
// # Concurrency
//
// A Client is safe for concurrent use and starts no goroutine; it needs no
// closing ([Client.CloseIdleConnections] closes its idle connections).
// Concurrent Opens of one channel share one round of requests.
//
// # Outages
//
// While nginx is down, calls retry the refused connection until their
// context's deadline (or [Options.MaxRetryTime]) and then fail with an
// [*Error] that wraps both the connection error (errors.Is(err,
// syscall.ECONNREFUSED)) and [context.DeadlineExceeded]; kept-alive
// connections that nginx closed are replaced without losing or doubling a
// POST. After nginx is back, a channel of the memory store is gone: Publish
// and Info report [relay.ErrChannelNotFound] (at the latest after
// [Options.ExistsTTL]; within it a POST re-creates the channel) and Open
// creates it again. With nchan_redis_pass channels and messages outlive
// nginx, and EventSource listeners resume with Last-Event-ID. While Redis is
// down behind Nchan, Nchan answers 503, which is retried: a call whose
// deadline outlives the outage succeeds once; a shorter one fails with an
// [*Error] of Status 503 wrapping [context.DeadlineExceeded].
//
// # Statistics
//
// [Client.Stats] and [Client.RelayStats] (a [relay.StatsReporter]) count
// requests by method, failed calls by reason, retries, and the channels
// known open.
package nchan

import "github.com/sessionpush/sessionpush/relay"

var _ relay.Relay = (*Client)(nil)
