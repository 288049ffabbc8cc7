package sessionpush

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed client.js
var clientJS []byte

var clientETag = func() string {
	sum := sha256.Sum256(clientJS)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}()

// ClientHandler returns a handler that serves the browser client, one
// dependency-free script (conventionally at /sessionpush.js). It defines
// SessionPush.connect, which calls /subscribe, listens on the returned URL
// with the first transport that works (WebSocket, EventSource, long-poll, in
// the order of its transports option), resumes from the last message id
// after every reconnect, calls /subscribe again after a 403, a 410 or a
// WebSocket close 1001, and backs off with jitter:
//
//	<script src="/sessionpush.js"></script>
//	<script>
//	  SessionPush.connect({
//	    subscribeURL: '/subscribe',
//	    onMessage: (m) => console.log(m.data, m.id),
//	    onState: (s) => console.log(s),
//	  });
//	</script>
//
// The script works unchanged with the embedded relay and with Nchan. It is
// served with an ETag, so browsers revalidate it cheaply.
func ClientHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", clientETag)
		http.ServeContent(w, r, "sessionpush.js", time.Time{}, bytes.NewReader(clientJS))
	})
}
