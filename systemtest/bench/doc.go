// Package bench is sessionpush's benchmark suite: real servers, real TCP
// connections, and every figure a ratio against a baseline measured in the
// same run. It has test files only.
//
// # Running it
//
// The full suite, two to three minutes on a 2-core machine (bounded to well
// under ten), printing one markdown table:
//
//	SESSIONPUSH_BENCH=full go test ./systemtest/bench -run TestSuite -v -timeout 15m
//
// Without SESSIONPUSH_BENCH the same test is a smoke test of a few seconds
// (N = 100 listeners, one run, 100 ms of load per generator) that asserts
// correctness only, never timing, and runs in CI under the README's test command.
//
// Parts of it run alone by subtest: -run 'TestSuite/middleware' (figure 1),
// 'TestSuite/publish' (2), 'TestSuite/fanout' (3 to 5),
// 'TestSuite/fanout/channels' (3, 4 and the fan-out half of 5),
// 'TestSuite/redishub' (6).
//
// Environment:
//
//	SESSIONPUSH_BENCH=full           the full run (N = 10,000, 5 runs)
//	SESSIONPUSH_BENCH_LISTENERS      N, listeners of figures 3 to 5
//	SESSIONPUSH_BENCH_RUNS           measured runs per figure (Middleware: 4×runs+1)
//	SESSIONPUSH_BENCH_OUT=<file>     also write the table to <file>
//	SESSIONPUSH_REQUIRE_SERVERS=1    fail instead of skipping when nginx, Nchan or redis-server is missing
//	SESSIONPUSH_BENCH_HEAPPROFILE=<dir>  figure 6: write hub-heap.pprof and redishub-heap.pprof
//	                                 (heap with the idle listeners, first measured round) to <dir>
//
// # The figures
//
// Each row gives the subject and the baseline as median [min–max] over the
// runs, and the median [min–max] of the per-run ratios subject/baseline
// (the two are measured in turns within each run, alternating which goes
// first). Targets are judged on medians in the full run only.
//
//  1. Middleware: Manager.Middleware on a signed-in request whose channel is
//     bound, against a bare CookieStore.Get of the same session; gob- and
//     JSON-encoded sessions (sessionpushtest.JSONSerializer set on the store's
//     securecookie codecs). ns/op, allocs/op and B/op from testing.Benchmark
//     (200 ms each, 4×runs+1 runs, in turns); and, as load-robust ns/op,
//     the medians over alternating blocks of 32 requests of each (400 ms
//     per run), where a block that the scheduler stalls does not count. The
//     smoke test checks that both find the user and the channel and that
//     the Middleware makes no relay call.
//  2. Publish: nchan.Client.Publish (its default transport) against a lean
//     load generator posting the same ~100-byte JSON body to the same Nchan
//     channel at 1, 16 and 64 concurrent, one second each per run in four
//     slices of 250 ms taken in turns. The generator works as wrk does: one
//     thread, an epoll loop over keep-alive raw TCP connections, prebuilt
//     request bytes, answers parsed only for the status line and
//     Content-Length. If wrk is on PATH, wrk
//     -t1 -cN with a Lua POST script runs too, to compare the generator
//     with it.
//  3. Fan-out: one message to each of N open channels, each with one
//     EventSource listener, and one message to one channel of N listeners;
//     the embedded relay (a hub.Hub served over TCP by this process,
//     published to with hub.Publish) against Nchan (nginx, published to with
//     nchan.Client, ExistsTTL one hour so that each message is one POST);
//     8 publishing goroutines for both. Deliveries per second and the time
//     from the first publish to the last delivery; p50 and p99 latency from
//     the intended send time in each message's body (the burst's start, or
//     the message's slot when paced: so a wait for a free publisher counts,
//     as wrk2 counts it against coordinated omission) to its receipt; server CPU per
//     delivery: this process's getrusage for the embedded relay (publishing
//     included), the nginx worker's run time from /proc/<pid>/schedstat for
//     Nchan (its HTTP publishing included). The N-channel case runs again
//     paced at 5,000 messages a second, below both relays' capacity, where
//     the latency is the relay's own rather than the burst's queue.
//  4. Idle listeners: memory per idle EventSource listener at N, from the
//     N-channel setup of figure 3: this process's VmRSS growth (after
//     runtime.GC and debug.FreeOSMemory) while the listeners connect, with
//     Go's HeapInuse and StackInuse growth; the nginx worker's VmRSS growth.
//  5. Broadcast to N listeners: Manager.Broadcast as a per-channel fan-out
//     (N channels in the store) against Config.BroadcastChannel (N
//     listeners on it): requests to the relay (relay calls for the embedded
//     relay, HTTP requests for Nchan) and the time from the call to the last
//     delivery, on both relays.
//  6. Redis: package redishub on two application instances (one Relay each,
//     with its own go-redis client, in this process) sharing one
//     redis-server, against Nchan + Redis on two nginx nodes
//     (example/nginx/cluster/node1.conf and node2.conf as shipped, only
//     their addresses replaced; their /authorize goes to a stub that lets
//     every listener in) sharing another. N channels, N listeners, one per
//     channel: channel i's listener is on instance (node) i mod 2 and its
//     message is published through instance ⌊i/2⌋ mod 2, so that half the
//     messages cross instances. One message to each channel, 8
//     publishing goroutines, as figure 3; rounds alternate, after a
//     warm-up round. Deliveries per second, p50/p99 latency, server CPU per
//     delivery (this process's getrusage, publishing included, for
//     redishub; the two nginx workers' run time for Nchan; and
//     redis-server's utime+stime, 10 ms ticks, for both), Redis commands
//     per message from INFO commandstats deltas (the commands that scripts
//     call included; INFO itself left out) and the script calls among
//     them, and redishub's round trips to Redis per publish, counted by a
//     go-redis hook (outside pipelines: publishing; the counts' sync
//     pipelines are apart), checked to be exactly one. And memory per idle
//     listener: this process's VmRSS growth while N listeners connect, for
//     redishub (two fresh instances, the channels opened in Redis, half
//     the listeners on each; the replicas are opened by the listeners)
//     against one embedded hub.Hub (the channels opened in it), in turns,
//     each torn down before the next, after a warm-up round.
//
// # Bounds
//
// Everything is on 127.0.0.1. Figures 3 to 5 hold N listeners on each relay
// at once (both relays are up together, and their rounds alternate), each
// round after a warm-up round, and wait at most two minutes for a round's
// deliveries; the load generators of figure 2 run for a fixed time and
// their connections are closed after it. nginx gets worker_rlimit_nofile
// and worker_connections for 2N and 256 MiB of Nchan shared memory.
//
// The listeners live in child processes, farms of systemtest/farm (this test
// binary again; TestMain calls farm.Main), one per relay, so that they have
// descriptors of their own: RLIMIT_NOFILE is 20000 here and its hard limit
// cannot be raised without CAP_SYS_RESOURCE, while the embedded relay's N
// server ends and N client ends would need 2N in one process. Each listener
// is a raw TCP connection with an HTTP/1.1 EventSource request
// (Last-Event-ID: the cursor that Open returned); the farm checks at the end
// of each setup that every listener got every message exactly once and
// nothing else.
package bench
