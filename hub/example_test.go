package hub_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// A long-poll listener walks a channel with If-Modified-Since and
// If-None-Match, the Last-Modified and Etag of the message it got.
func Example() {
	ctx := context.Background()
	h := hub.New(hub.Options{})
	defer h.Shutdown(ctx)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		// A real application first checks that r may listen to the channel.
		h.ServeSubscriber(w, r, r.PathValue("channel"))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	const channel = "9b2f6c1e-4a7d-4e3b-8c5f-0d1e2f3a4b5c"
	cursor, _ := h.Open(ctx, channel)
	fmt.Println("cursor:", cursor)
	h.Publish(ctx, channel, relay.Message{Body: []byte("hello"), ContentType: "text/plain"})
	h.Publish(ctx, channel, relay.Message{Body: []byte("world")})

	req, _ := http.NewRequest("GET", srv.URL+"/sub/"+channel, nil)
	for range 2 {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s %q\n", resp.StatusCode, body, resp.Header.Get("Content-Type"))
		req.Header.Set("If-Modified-Since", resp.Header.Get("Last-Modified"))
		req.Header.Set("If-None-Match", resp.Header.Get("Etag"))
	}

	info, _ := h.Info(ctx, channel)
	fmt.Println("buffered:", info.Messages)
	// Output:
	// cursor: 0:0
	// 200 hello "text/plain"
	// 200 world ""
	// buffered: 2
}
