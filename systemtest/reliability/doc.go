// Package reliability holds sessionpush's reliability tests; it has no API
// of its own. They test the relays from outside, through their public APIs
// and over real HTTP, TCP and WebSocket connections: the embedded relay
// (package hub, served by a real HTTP server on 127.0.0.1) and Nchan 1.3.6
// behind nginx (started by internal/servers).
//
// What they check:
//
//   - Loss: a listener on each transport (long-poll, EventSource,
//     WebSocket with ws+meta.nchan) that reconnects at random moments
//     (seeded, the seed logged) and resumes from its last message ID gets
//     every message still buffered exactly once, in order. With a small
//     buffer, a listener that fell behind gets the hub's gap signal before
//     the first message after the gap, never a silent skip; on Nchan, which
//     gives no signal, the silently skipped messages are counted and logged.
//     A hub listener back after its messages expired (Options.MessageTTL)
//     gets the gap signal too.
//   - Fault: Hub.Shutdown with a thousand listeners of all transports ends
//     each one as a closed channel does, returns within its deadline and
//     leaves no goroutine behind; a graceful stop of nginx does the same on
//     Nchan.
//   - Slow consumers: a listener that stops reading neither delays Publish
//     nor the other listeners, is disconnected after Options.WriteTimeout,
//     and holds no growing memory.
//   - Load: many EventSource listeners under sustained pushes receive every
//     message, with flat memory; the p99 delivery latency is logged.
//
// The default runs are short, for CI under `go test -race`. With
// SESSIONPUSH_LONG=1 they take the sizes given in docs/reliability.md
// (5,000 messages and 50 reconnects per listener,
// 10,000 listeners for 60 seconds). Figures are logged with t.Logf in lines
// that start with "RESULT" and hold key=value pairs.
package reliability
