package hub_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/coder/websocket"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
)

// A long-poll listener starts from the cursor that Open returned (without a
// position it would wait for the next message), then walks the channel with
// If-Modified-Since and If-None-Match, the Last-Modified and Etag of the
// message it got.
func Example() {
	ctx := context.Background()
	h := hub.New(hub.Options{})
	defer h.Shutdown(ctx)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		// A real application first checks that r may listen to the channel.
		h.ServeListener(w, r, r.PathValue("channel"))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	const channel = "9b2f6c1e-4a7d-4e3b-8c5f-0d1e2f3a4b5c"
	cursor, _ := h.Open(ctx, channel)
	fmt.Println("cursor:", cursor)
	h.Publish(ctx, channel, relay.Message{Body: []byte("hello"), ContentType: "text/plain"})
	h.Publish(ctx, channel, relay.Message{Body: []byte("world")})

	req, _ := http.NewRequest("GET", srv.URL+"/sub/"+channel, nil)
	req.Header.Set("Last-Event-ID", cursor)
	for range 2 {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s %q\n", resp.StatusCode, body, resp.Header.Get("Content-Type"))
		req.Header.Del("Last-Event-ID")
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

// A WebSocket listener that asks for Nchan's ws+meta.nchan subprotocol gets
// each message's ID, to resume from with ?last_event_id=, and its
// Content-Type before its body. Closing the channel closes the connection
// with status 1001 (going away).
func Example_webSocket() {
	ctx := context.Background()
	h := hub.New(hub.Options{})
	defer h.Shutdown(ctx)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		// A real application first checks that r may listen to the channel.
		h.ServeListener(w, r, r.PathValue("channel"))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	const channel = "9b2f6c1e-4a7d-4e3b-8c5f-0d1e2f3a4b5c"
	cursor, _ := h.Open(ctx, channel)
	receipt, _ := h.Publish(ctx, channel, relay.Message{Body: []byte(`{"hello":"world"}`), ContentType: "application/json"})

	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/sub/" + channel + "?last_event_id=" + cursor
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"ws+meta.nchan"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.CloseNow()
	_, frame, _ := conn.Read(ctx)
	fmt.Println(strings.Replace(string(frame), receipt.ID, "<id>", 1))

	h.Close(ctx, channel)
	_, _, err = conn.Read(ctx)
	fmt.Println(websocket.CloseStatus(err))
	// Output:
	// id: <id>
	// content-type: application/json
	//
	// {"hello":"world"}
	// StatusGoingAway
}

// Stats counts what the hub does; here a listener that resumes after a
// message the buffer (one message) no longer holds gets the next one with
// the gap signal. RelayStats gives the same numbers as relay.Stat, for a
// metrics exporter.
func ExampleHub_Stats() {
	ctx := context.Background()
	h := hub.New(hub.Options{BufferLength: 1})
	defer h.Shutdown(ctx)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, "news")
	}))
	defer srv.Close()

	h.Open(ctx, "news")
	first, _ := h.Publish(ctx, "news", relay.Message{Body: []byte("one")})
	h.Publish(ctx, "news", relay.Message{Body: []byte("two")})
	h.Publish(ctx, "news", relay.Message{Body: []byte("three")})

	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Last-Event-ID", first.ID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("%s, gap after the first: %v\n", body, resp.Header.Get("X-Gap") == first.ID)

	s := h.Stats()
	fmt.Printf("channels %d, published %d, deliveries %d, gaps %d\n", s.Channels, s.Published, s.Deliveries, s.Gaps)
	for _, st := range h.RelayStats() {
		if st.Name == "gaps_total" {
			fmt.Println(st.Name, st.Value)
		}
	}
	// Output:
	// three, gap after the first: true
	// channels 1, published 3, deliveries 1, gaps 1
	// gaps_total 1
}
