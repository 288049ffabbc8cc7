// Package servers starts real nginx+Nchan and redis-server processes for
// tests, each on a free 127.0.0.1 port in a directory of t.TempDir(), and
// stops them when the test ends.
//
// # nginx with Nchan
//
// [StartNginx] renders a config from a text/template ({{.Port}}, {{.Addr}},
// {{.Dir}}, {{.Module}}, any [NginxOptions.Vars], and {{port "name"}} for more
// free ports), starts `nginx -e stderr -p <dir> -c <dir>/nginx.conf` as a
// child (the config must say `daemon off;`, so the child is the master) and
// waits until GET /pub?id=__ready (or [NginxOptions.ReadyPath]) answers
// something other than 503. It never sends HEAD, which Nchan never answers.
// [Nginx.Stop] and [Nginx.Start] stop and start it again on the same ports,
// for fault tests; [Nginx.WorkerPID] finds the worker process.
//
// A config must let nginx run from a temporary prefix without root:
// load_module in the main context (the only place nginx takes it), all five
// *_temp_path directives relative to the prefix (nginx falls back to
// /var/lib/nginx/ for any it lacks), pid and error_log relative to the
// prefix, and one worker (Nchan's memory store keeps the channels in that
// worker). [MinimalNchanConf] is one.
//
// # Redis
//
// [StartRedis] starts `redis-server --port <free> --bind 127.0.0.1 --save ”
// --appendonly no --dir <tempdir>` and waits until it answers PING.
// [NewRedis] only chooses the port and directory, for tests that start Redis
// later than the nginx that uses it.
//
// # Missing servers
//
// [Require] skips the test when a binary or the Nchan module is missing,
// unless the environment sets SESSIONPUSH_REQUIRE_SERVERS=1: then it fails
// the test, so that CI cannot pass by skipping.
//
// # Processes
//
// Every process is stopped in t.Cleanup: nginx with SIGQUIT, then SIGTERM
// after [GracefulTimeout] (idle keep-alive connections can hold a graceful
// stop), Redis with SIGTERM; then SIGKILL after [StopTimeout], nginx's
// workers with their master. When the test process runs as root, nginx
// workers run as nobody: the prefix directory and its parent are made
// world-readable and searchable (0755) so that they can use the temp paths.
//
// The helpers call t.Fatal, so they belong in the test goroutine.
package servers
