package metrics_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/metrics"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// Serving /metrics next to the application, and what a scrape finds after
// one sign-in and one push.
func ExampleHandler() {
	kit, _ := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(kit.Manager))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	_, channel, _ := kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice")
	kit.Manager.PushJSON(context.Background(), channel, "hello")

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	fmt.Println(resp.Header.Get("Content-Type"))
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "sessionpush_channels_open") || strings.HasPrefix(line, "sessionpush_pushes_total") {
			fmt.Println(line)
		}
	}
	// Output:
	// text/plain; version=0.0.4; charset=utf-8
	// sessionpush_channels_opened_total 1
	// sessionpush_channels_open 1
	// sessionpush_pushes_total 1
}

// Writing a snapshot, with a relay stat, in the text format.
func ExampleWrite() {
	s := sessionpush.Stats{
		ChannelsOpened: 3,
		OpenChannels:   -1, // the Store cannot tell: no gauge
		Relay: []relay.Stat{
			{Name: "listeners", Help: "Listeners connected now.", Gauge: true, Labels: [][2]string{{"transport", "websocket"}}, Value: 2},
		},
	}
	var out strings.Builder
	metrics.Write(&out, s)
	for line := range strings.Lines(out.String()) {
		if strings.Contains(line, "opened") || strings.Contains(line, "relay_listeners") {
			os.Stdout.WriteString(line)
		}
	}
	// Output:
	// # HELP sessionpush_channels_opened_total Channels opened by SubscribeHandler.
	// # TYPE sessionpush_channels_opened_total counter
	// sessionpush_channels_opened_total 3
	// # HELP sessionpush_relay_listeners Listeners connected now.
	// # TYPE sessionpush_relay_listeners gauge
	// sessionpush_relay_listeners{transport="websocket"} 2
}
