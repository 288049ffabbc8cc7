// Package systemtest holds the system tests of sessionpush: tests that start
// real nginx with Nchan, redis-server, or thousands of listeners, and the
// benchmark suite. Each is a package of its own below this one:
//
//   - scaleout: two application instances and two nginx + Nchan nodes on
//     one Redis;
//   - reliability: loss, fault, slow-consumer and load tests (short by
//     default; SESSIONPUSH_LONG=1 for the long runs);
//   - bench: the benchmark suite behind BENCHMARKS.md (a smoke run by
//     default; SESSIONPUSH_BENCH=full for the figures);
//   - farm: a child process holding thousands of EventSource listeners
//     (plaintext or over TLS, HTTP/2 or WebSocket), for the benchmarks and
//     load tests;
//   - peers: the embedded relay against Centrifuge, Mercure and a bare
//     write loop, and over TLS and HTTP/2 (a module of its own, so that
//     the peers' dependencies stay out of this one).
//
// This is a module of its own (it imports redisstore). Its tests run in
// the README's test command, and skip with a message when a server is missing, unless
// SESSIONPUSH_REQUIRE_SERVERS=1.
package systemtest
