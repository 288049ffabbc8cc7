package reliability

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/sessionpush/sessionpush/hub"
)

// TestShutdownEndsEveryListener: Shutdown with a thousand listeners of all
// three transports connected ends each as a closed channel does (long-poll
// 410, EventSource ":410: 410 Gone", WebSocket close 1001 "410 Gone"),
// returns nil within its deadline, refuses later listeners (503), and
// leaves no goroutine behind.
func TestShutdownEndsEveryListener(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const channels = 50
	n := 1000
	h := hub.New(hub.Options{MaxListeners: -1})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{ch}", func(w http.ResponseWriter, r *http.Request) {
		h.ServeSubscriber(w, r, r.PathValue("ch"))
	})
	srv := httptest.NewServer(mux)
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	names := make([]string, channels)
	cursors := make([]string, channels)
	for i := range names {
		names[i] = fmt.Sprintf("shutdown-%d", i)
		var err error
		if cursors[i], err = h.Open(ctx, names[i]); err != nil {
			t.Fatal(err)
		}
	}

	// Each listener reports how it ended: "" when it saw the end a closed
	// channel gives, else what it saw.
	ends := make(chan string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	dialErrs := make(chan error, n)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := srv.URL + "/sub/" + names[i%channels]
			cursor := cursors[i%channels]
			switch i % 3 {
			case 0:
				<-sem
				ends <- waitLongPoll(ctx, hc, url, cursor)
			case 1:
				es, err := openEventSource(ctx, hc, url, cursor)
				<-sem
				if err != nil {
					dialErrs <- err
					return
				}
				ends <- readEventSourceEnd(es.r)
				es.close()
			case 2:
				conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http"), &websocket.DialOptions{HTTPClient: hc})
				<-sem
				if err != nil {
					dialErrs <- err
					return
				}
				_, b, err := conn.Read(ctx)
				var ce websocket.CloseError
				if errors.As(err, &ce) && ce.Code == websocket.StatusGoingAway && ce.Reason == "410 Gone" {
					ends <- ""
				} else {
					ends <- fmt.Sprintf("websocket: read %q, %v", b, err)
				}
				conn.CloseNow()
			}
		}()
	}
	listening := func() int64 {
		l := h.Stats().Listeners
		return l.LongPoll + l.EventSource + l.WebSocket
	}
	if !waitFor(time.Minute, func() bool { return listening() == int64(n) || len(dialErrs) > 0 }) || len(dialErrs) > 0 {
		t.Fatalf("%d of %d listeners connected; dial errors: %d (first: %v)", listening(), n, len(dialErrs), drain(dialErrs))
	}

	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	start := time.Now()
	err := h.Shutdown(sctx)
	took := time.Since(start)
	if err != nil {
		t.Errorf("Shutdown: %v after %v, want nil within its 30 s deadline", err, took)
	}
	wg.Wait()
	close(ends)
	bad, first := 0, ""
	for e := range ends {
		if e != "" {
			if bad == 0 {
				first = e
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d listeners did not see their end; first: %s", bad, n, first)
	}
	if got := waitLongPoll(ctx, hc, srv.URL+"/sub/"+names[0], ""); got != "long-poll: 503 Service Unavailable" {
		t.Errorf("listener after Shutdown: %s, want 503", got)
	}
	t.Logf("RESULT test=shutdown listeners=%d shutdown_ms=%.1f not_ended=%d", n, float64(took.Microseconds())/1000, bad)

	srv.Close()
	tr.CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

// waitLongPoll makes one long-poll and returns "" if it was answered 410,
// else what it got.
func waitLongPoll(ctx context.Context, hc *http.Client, url, from string) string {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err.Error()
	}
	if from != "" {
		req.Header.Set("Last-Event-ID", from)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "long-poll: " + err.Error()
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusGone {
		return ""
	}
	return "long-poll: " + resp.Status
}

// readEventSourceEnd reads a stream up to its end and returns "" if it
// ended with ":410: 410 Gone" and no event, else what it saw.
func readEventSourceEnd(r *bufio.Reader) string {
	for {
		line, err := r.ReadString('\n')
		switch {
		case err != nil:
			return fmt.Sprintf("eventsource: %v before \":410\"", err)
		case strings.HasPrefix(line, ":410"):
			return ""
		case line == "\n" || strings.HasPrefix(line, ":"):
		default:
			return fmt.Sprintf("eventsource: %q before \":410\"", line)
		}
	}
}
