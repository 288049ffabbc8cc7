// Package e2e holds the browser tests of sessionpush: the example app
// (../example) driven in headless Chromium through chromedp, on the embedded
// relay and on Nchan behind ../example/nginx/nginx.conf, over each transport
// of the browser client (../client.js): websocket, eventsource, longpoll.
//
// It is a module of its own, so that chromedp stays out of the library's
// dependencies; `go test ./...` at the root does not reach into it, so the
// README's test command runs it on its own. From this directory:
//
//	go test ./...                                    # every test, every relay and transport
//	go test ./... -run 'TestTwoUsers/nchan/websocket' # one row
//
// TestNchanSubscriber and TestEventSourceClients run clients the project
// did not write against both relays (../docs/clients.md): NchanSubscriber
// from the npm package nchan in Chromium, the npm package eventsource under
// Node.js, and github.com/tmaxmax/go-sse. The npm packages are pinned in
// clients/package-lock.json; install them with `npm ci` in clients/.
//
// The tests need Debian's chromium at /usr/bin/chromium, node and the npm
// packages for the third-party clients, and, for the Nchan rows, nginx
// with libnginx-mod-nchan. Without them they skip, unless
// SESSIONPUSH_REQUIRE_SERVERS=1 (as in .ci/run): then they fail. With
// -short they skip. Each test leaves a screenshot of the page in
// screenshots/ (ignored by git).
package e2e
