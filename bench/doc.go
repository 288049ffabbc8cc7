// Package bench holds benchmarks that need real servers and many
// connections; it has test files only.
//
// TestBroadcastScale answers "broadcast to N open channels, each with one
// EventSource listener, on both relays: per-channel fan-out versus one
// publish to the broadcast channel (Config.BroadcastChannel)". For each relay
// (the embedded hub, served by an httptest server, and nginx+Nchan started
// by internal/servers) and each mode it opens N listeners over real TCP on
// 127.0.0.1, calls Manager.Broadcast once as a warm-up and then
// SESSIONPUSH_BENCH_ROUNDS times, and reports per mode: relay Publish calls
// and, for Nchan, HTTP requests made during the Broadcast call; how long the
// call took; and the time from the call to the last listener's delivery.
// Medians are given with min–max, and the broadcast/fan-out ratio of the
// medians for the same relay in the same run.
//
// By default (N = 200) it is a smoke test of a few seconds that asserts only
// correctness: every listener gets every message exactly once, and nothing
// else. The full run:
//
//	SESSIONPUSH_BENCH_LISTENERS=10000 go test -run TestBroadcastScale -v -timeout 30m ./bench/
//
// Environment:
//
//	SESSIONPUSH_BENCH_LISTENERS    N, listeners per mode (default 200)
//	SESSIONPUSH_BENCH_ROUNDS       measured Broadcast calls per mode (default 3)
//	SESSIONPUSH_BENCH_RELAYS       "embedded", "nchan" or both (default "embedded,nchan")
//	SESSIONPUSH_BENCH_CONCURRENCY  Config.Concurrency (default 0: sessionpush.DefaultConcurrency)
//	SESSIONPUSH_REQUIRE_SERVERS=1  fail instead of skipping when nginx or Nchan is missing
//
// The listeners live in a child process, the farm of internal/farm (this
// test binary again; TestMain calls farm.Main), so that the client side has
// descriptors of its own: RLIMIT_NOFILE is 20000 here and its hard limit
// cannot be raised without CAP_SYS_RESOURCE, while the embedded relay's N
// server ends and N client ends would need 2N in one process. Each listener
// is a raw TCP connection with an HTTP/1.1 EventSource request
// (Last-Event-ID: the cursor that Open returned); the farm reports each
// message's deliveries, the time of the last one and latencies from the send
// time in the body. nginx gets worker_rlimit_nofile and worker_connections
// for 2N.
package bench
