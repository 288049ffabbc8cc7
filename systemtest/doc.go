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
//   - farm: a child process holding thousands of EventSource listeners,
//     for the benchmarks and load tests.
//
// This is a module of its own (it imports redisstore). Its tests run in
// the README's test command, and skip with a message when a server is missing, unless
// SESSIONPUSH_REQUIRE_SERVERS=1.
package systemtest
