// Package peers compares the embedded relay (package hub) with its Go peers,
// Centrifuge and Mercure, and with a bare write loop as the floor, in one
// run driven by the listener farm (package farm); and the embedded relay
// over TLS and HTTP/2 with its own plaintext figures. It is a module of its
// own so that the peers' dependencies stay out of the library's go.mod.
//
// The run, which prints the table and checks every delivery once:
//
//	SESSIONPUSH_BENCH=full go test ./systemtest/peers -run TestPeers -v -timeout 15m
//
// Without SESSIONPUSH_BENCH=full, TestPeers is the smoke variant: 100
// listeners per topology, one round, every delivery checked once, no
// timing judged. SESSIONPUSH_BENCH_ONLY=row[,row] runs those rows only (the
// names in the table: hub-h1, hub-tls-h1, hub-h2-tls, hub-h2-tls-mux, hub-ws-tls,
// centrifuge, mercure, floor); SESSIONPUSH_BENCH_N sets the listeners per
// topology (default 10000), SESSIONPUSH_BENCH_ROUNDS the measured rounds
// (default 5), SESSIONPUSH_BENCH_CPUPROFILE=dir writes a CPU profile of
// each row's measured rounds there. BENCHMARKS.md has a run, the peers'
// versions and settings, and what makes a comparison unequal.
package peers
