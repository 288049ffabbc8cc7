package farm_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// Three listeners of one channel of an embedded relay; one stamped message;
// its deliveries. In a test, farm.Start(t, ...) does what New and Close do
// here. The package's TestMain must call farm.Main.
func Example() {
	h := hub.New(hub.Options{Logger: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, r.URL.Path[len("/sub/"):])
	}))
	defer srv.Close()
	ctx := context.Background()
	defer h.Shutdown(ctx)
	cursor, _ := h.Open(ctx, "news")

	l := farm.Listener{Addr: srv.Listener.Addr().String(), Path: "/sub/news", LastEventID: cursor}
	f, err := farm.New(farm.Options{Listeners: []farm.Listener{l, l, l}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()

	h.Publish(ctx, "news", relay.Message{Body: farm.Body("m1", time.Now(), 0)})
	st, err := f.Wait("m1", 3, time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	verdict, _ := f.Check([]string{"m1"}, 50*time.Millisecond)
	fmt.Println(st.Count, st.Stamped, st.P99 > 0, st.Last.Sub(st.MinSent) == st.Max, verdict == "")
	// Output: 3 3 true true true
}
