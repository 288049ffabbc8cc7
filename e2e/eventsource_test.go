package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sse "github.com/tmaxmax/go-sse"
)

// An EventSource client outside the browser: it listens on url with the
// session cookie, from Last-Event-ID: start, and records into a streamLog
// until the test ends.
type sseClient func(t *testing.T, url string, a *account, start string) *streamLog

// TestEventSourceClients: EventSource clients that the project did not
// write, the npm package eventsource under Node and
// github.com/tmaxmax/go-sse, on both relays. Each starts from the cursor of
// a /subscribe made after a message had been pushed, with Last-Event-ID,
// and receives exactly the messages pushed after that /subscribe, in order.
// Then the network drops its connection and refuses new ones while two
// more messages are pushed; once it is back, the client resumes with the
// Last-Event-ID of the last message it received and gets the two, then the
// next push: each message once, in order.
func TestEventSourceClients(t *testing.T) {
	needExample(t)
	clients := []struct {
		name  string
		start sseClient
	}{
		{"node-eventsource", startNodeEventSource},
		{"go-sse", startGoSSE},
	}
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) {
			s := startThirdPartySite(t, relay)
			for _, c := range clients {
				t.Run(c.name, func(t *testing.T) { sseConformance(t, s, c.name, c.start) })
			}
		})
	}
}

func sseConformance(t *testing.T, s *thirdPartySite, who string, start sseClient) {
	a := signIn(t, s.URL, "erin")
	sub := a.subscribeBetween()
	log := start(t, s.Base+sub.URL, a, sub.Cursor)
	log.waitMessages(t, who, "m1")
	a.push("m2")
	log.waitMessages(t, who, "m1", "m2")
	_, _, _, got := log.snapshot()
	resumeFrom := got[1].ID

	refused := s.cut()
	s.waitRefused(t, refused)
	a.push("m3", "m4")
	s.net.restore()
	log.waitMessages(t, who, "m1", "m2", "m3", "m4")
	a.push("m5")
	log.waitMessages(t, who, numbered("m", 1, 5)...)

	requests, opens, errs, _ := log.snapshot()
	if len(requests) < 3 || requests[0] != sub.Cursor {
		t.Errorf("%s: requests with Last-Event-ID %q; want the first with the cursor %q, then at least two more", who, requests, sub.Cursor)
	}
	// The reconnection that got through after the cut resumed from m2.
	if last := requests[len(requests)-1]; last != resumeFrom {
		t.Errorf("%s: the last request had Last-Event-ID %q; want %q, the ID of m2", who, last, resumeFrom)
	}
	if opens != 2 {
		t.Errorf("%s: opened %d streams; want 2, before and after the cut", who, opens)
	}
	t.Logf("%s: requests (Last-Event-ID) %q, errors %q", who, requests, errs)
}

// startNodeEventSource runs clients/eventsource.mjs under node.
func startNodeEventSource(t *testing.T, url string, a *account, start string) *streamLog {
	t.Helper()
	node := needNode(t)
	needNPMPackages(t)
	cmd := exec.Command(node, filepath.Join(clientsDir, "eventsource.mjs"), url, a.cookieHeader(), start)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log := &streamLog{}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var line struct {
				Type, LastEventID, Error, ID, Data string
			}
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				log.error("unreadable line " + sc.Text())
				continue
			}
			switch line.Type {
			case "request":
				log.request(line.LastEventID)
			case "open":
				log.open()
			case "error":
				log.error(line.Error)
			case "message":
				log.message(received{ID: line.ID, Data: line.Data})
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		stdin.Close() // the script closes its EventSource and exits
		done := make(chan error, 1)
		go func() { <-read; done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node eventsource.mjs: %v\n%s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("node eventsource.mjs did not end within 10 s of its stdin closing\n%s", stderr.String())
		}
	})
	return log
}

// startGoSSE listens with github.com/tmaxmax/go-sse's client, through an
// http.Client with the session's cookie jar.
func startGoSSE(t *testing.T, url string, a *account, start string) *streamLog {
	t.Helper()
	log := &streamLog{}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Last-Event-ID", start)
	client := &sse.Client{
		HTTPClient: &http.Client{Jar: a.Jar, Transport: recordLastEventID{log, http.DefaultTransport}},
		ResponseValidator: func(r *http.Response) error {
			if err := sse.DefaultValidator(r); err != nil {
				return err // permanent: the test fails waiting
			}
			log.open()
			return nil
		},
		OnRetry: func(err error, _ time.Duration) { log.error(err.Error()) },
		// Retry soon and often: the test waits for the reconnection.
		Backoff: sse.Backoff{InitialInterval: 200 * time.Millisecond, MaxInterval: time.Second},
	}
	conn := client.NewConnection(req)
	conn.SubscribeMessages(func(ev sse.Event) { log.message(received{ID: ev.LastEventID, Data: ev.Data}) })
	done := make(chan error, 1)
	go func() { done <- conn.Connect() }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled && !strings.Contains(err.Error(), context.Canceled.Error()) {
			t.Errorf("go-sse: Connect: %v", err)
		}
	})
	return log
}

// recordLastEventID records the Last-Event-ID of each request that go-sse
// makes.
type recordLastEventID struct {
	log  *streamLog
	next http.RoundTripper
}

func (r recordLastEventID) RoundTrip(req *http.Request) (*http.Response, error) {
	r.log.request(req.Header.Get("Last-Event-ID"))
	return r.next.RoundTrip(req)
}
