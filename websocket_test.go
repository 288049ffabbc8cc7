package sessionpush_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// dialWS opens a WebSocket listener on path with b's cookies.
func (b *browser) dialWS(ctx context.Context, path string) (*websocket.Conn, *http.Response, error) {
	u := mustURL(b.a.srv.URL)
	hdr := http.Header{}
	for _, c := range b.c.Jar.Cookies(u) {
		hdr.Add("Cookie", c.Name+"="+c.Value)
	}
	return websocket.Dial(ctx, "ws://"+u.Host+path, &websocket.DialOptions{HTTPHeader: hdr, Subprotocols: []string{"ws+meta.nchan"}})
}

// The WebSocket transport through the kit: the Middleware's ResponseWriter
// lets the relay hijack the connection, ownership is checked at the
// handshake, and logout closes the socket with 1001.
func TestWebSocketThroughTheKit(t *testing.T) {
	a := newApp(t, nil)
	b := a.browser().login("alice")
	sub := b.subscribe()
	b.push(`{"n":1}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, _, err := b.dialWS(ctx, sub.URL+"?last_event_id="+sub.Cursor)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.CloseNow()
	_, frame, err := conn.Read(ctx)
	if err != nil || !strings.HasPrefix(string(frame), "id: ") || !strings.HasSuffix(string(frame), "\n\n"+`{"n":1}`) {
		t.Fatalf("first frame %q, %v", frame, err)
	}

	for name, other := range map[string]*browser{"another user": a.browser().login("mallory"), "no cookie": a.browser()} {
		_, resp, err := other.dialWS(ctx, sub.URL)
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("%s: handshake %v, %v; want 403", name, resp, err)
		}
	}

	b.status("POST", "/logout", nil)
	_, _, err = conn.Read(ctx)
	if status := websocket.CloseStatus(err); status != websocket.StatusGoingAway {
		var ce websocket.CloseError
		errors.As(err, &ce)
		t.Fatalf("after logout: %v (status %d, reason %q), want 1001", err, status, ce.Reason)
	}
}
