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
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
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
		h.ServeListener(w, r, r.PathValue("ch"))
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

	ml := connectMixed(ctx, hc, n, func(i int) (string, string) {
		return srv.URL + "/sub/" + names[i%channels], cursors[i%channels]
	})
	listening := func() int64 {
		l := h.Stats().Listeners
		return l.LongPoll + l.EventSource + l.WebSocket
	}
	if !waitFor(time.Minute, func() bool { return listening() == int64(n) || len(ml.dialErrs) > 0 }) || len(ml.dialErrs) > 0 {
		t.Fatalf("%d of %d listeners connected; dial errors: %d (first: %v)", listening(), n, len(ml.dialErrs), drain(ml.dialErrs))
	}

	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	start := time.Now()
	err := h.Shutdown(sctx)
	took := time.Since(start)
	if err != nil {
		t.Errorf("Shutdown: %v after %v, want nil within its 30 s deadline", err, took)
	}
	if bad, first := ml.wait(); bad > 0 {
		t.Errorf("%d of %d listeners did not see their end; first: %s", bad, n, first)
	}
	if got := waitLongPoll(ctx, hc, srv.URL+"/sub/"+names[0], ""); got != "long-poll: 503 Service Unavailable" {
		t.Errorf("listener after Shutdown: %s, want 503", got)
	}
	t.Logf("RESULT test=shutdown listeners=%d shutdown_ms=%.1f", n, float64(took.Microseconds())/1000)

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

// mixedListeners are listeners of all three transports, each waiting for
// its end.
type mixedListeners struct {
	wg       sync.WaitGroup
	ends     chan string // "" for a listener that saw the end of a closed channel, else what it saw
	dialErrs chan error
}

// connectMixed connects n listeners, a third of each transport, listener i
// to the URL and cursor that at(i) returns, 32 at a time; each waits for
// its end in a goroutine of its own.
func connectMixed(ctx context.Context, hc *http.Client, n int, at func(int) (string, string)) *mixedListeners {
	ml := &mixedListeners{ends: make(chan string, n), dialErrs: make(chan error, n)}
	sem := make(chan struct{}, 32)
	// Each listener reports how it ended: "" when it saw the end a closed
	// channel gives, else what it saw.
	for i := range n {
		sem <- struct{}{}
		ml.wg.Add(1)
		go func() {
			defer ml.wg.Done()
			url, cursor := at(i)
			switch i % 3 {
			case 0:
				<-sem
				ml.ends <- waitLongPoll(ctx, hc, url, cursor)
			case 1:
				es, err := openEventSource(ctx, hc, url, cursor)
				<-sem
				if err != nil {
					ml.dialErrs <- err
					return
				}
				ml.ends <- readEventSourceEnd(es.r)
				es.close()
			case 2:
				conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"?last_event_id="+cursor, &websocket.DialOptions{HTTPClient: hc})
				<-sem
				if err != nil {
					ml.dialErrs <- err
					return
				}
				_, b, err := conn.Read(ctx)
				var ce websocket.CloseError
				if errors.As(err, &ce) && ce.Code == websocket.StatusGoingAway && ce.Reason == "410 Gone" {
					ml.ends <- ""
				} else {
					ml.ends <- fmt.Sprintf("websocket: read %q, %v", b, err)
				}
				conn.CloseNow()
			}
		}()
	}
	return ml
}

// wait waits until every listener has ended and returns how many did not
// see the end of a closed channel, and what the first of them saw.
func (ml *mixedListeners) wait() (bad int, first string) {
	ml.wg.Wait()
	close(ml.ends)
	for e := range ml.ends {
		if e != "" {
			if bad == 0 {
				first = e
			}
			bad++
		}
	}
	return bad, first
}

// TestNchanStopEndsEveryListener measures the same on Nchan: a graceful
// stop of nginx (SIGQUIT) with listeners of all three transports connected
// ends each as a deleted channel does.
func TestNchanStopEndsEveryListener(t *testing.T) {
	const channels = 10
	n := pick(300, 1000)
	ngx := servers.StartNginxWith(t, nchanConf, servers.NginxOptions{
		Vars:      map[string]any{"Big": 10, "Small": 10},
		ReadyPath: "/ready",
	})
	pub, err := nchan.New(ngx.URL+"/pub/big/{channel}", nchan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}
	hc := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	names := make([]string, channels)
	cursors := make([]string, channels)
	for i := range names {
		names[i] = fmt.Sprintf("stop-%d-%d", time.Now().UnixNano(), i)
		if cursors[i], err = pub.Open(ctx, names[i]); err != nil {
			t.Fatal(err)
		}
	}
	ml := connectMixed(ctx, hc, n, func(i int) (string, string) {
		return ngx.URL + "/sub/" + names[i%channels], cursors[i%channels]
	})
	listening := func() int {
		sum := 0
		for _, ch := range names {
			sum += subscribers(pub, ch)
		}
		return sum
	}
	if !waitFor(time.Minute, func() bool { return listening() == n || len(ml.dialErrs) > 0 }) || len(ml.dialErrs) > 0 {
		t.Fatalf("%d of %d listeners connected; dial errors: %d (first: %v)", listening(), n, len(ml.dialErrs), drain(ml.dialErrs))
	}
	pub.CloseIdleConnections() // nginx's graceful stop waits for idle keep-alive connections
	start := time.Now()
	ngx.Stop()
	took := time.Since(start)
	bad, first := ml.wait()
	if bad > 0 {
		t.Errorf("%d of %d listeners did not see their end; first: %s", bad, n, first)
	}
	t.Logf("RESULT test=nchan_stop listeners=%d stop_ms=%.1f not_ended=%d", n, float64(took.Microseconds())/1000, bad)
}
