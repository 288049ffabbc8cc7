package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// scaleListeners is how many listeners TestNginxListenersAtScale connects:
// 1,500 in the test command (above the 1,024 connections of the config
// before it was sized), 10,000 with SESSIONPUSH_LONG=1.
func scaleListeners() int {
	if os.Getenv("SESSIONPUSH_LONG") == "1" {
		return 10_000
	}
	return 1_500
}

// raiseNoFile raises this process's soft RLIMIT_NOFILE to at least n (up to
// the hard limit, or above it as root); the listener farm and nginx, its
// children, inherit it. It skips the test when that fails, unless
// SESSIONPUSH_REQUIRE_SERVERS=1.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	old := lim
	lim.Cur = n
	if lim.Max < n {
		lim.Max = n // root only
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		msg := fmt.Sprintf("RLIMIT_NOFILE is %d (hard %d) and cannot be raised to %d: %v", old.Cur, old.Max, n, err)
		if os.Getenv(servers.RequireEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// TestNginxListenersAtScale runs the shipped config unedited (ports aside)
// with the app behind it: N sessions sign in and /subscribe through nginx,
// N EventSource listeners (one per session, in a farm process) connect
// through nginx, each authorized by the app, and each session pushes one
// message through nginx's /push, which the app publishes to Nchan. Every
// listener connects (0 refused), stays (0 dropped), and gets its message
// exactly once; nginx's error log never says "worker_connections are not
// enough". N is 1,500 here, 10,000 with SESSIONPUSH_LONG=1:
//
//	SESSIONPUSH_LONG=1 go test -count=1 -run TestNginxListenersAtScale -v ./example/
func TestNginxListenersAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the listeners at scale are skipped")
	}
	n := scaleListeners()
	raiseNoFile(t, uint64(n+2048)) // the farm holds n; nginx raises its own (worker_rlimit_nofile)
	s := startNginxSiteWith(t, nginxConf(t), func(c *sessionpush.Config) { c.Logger = quietLogger(t) })
	host := strings.TrimPrefix(s.URL, "http://")
	start := time.Now()

	// Sign-ins and /subscribe through nginx, 32 at a time.
	type session struct {
		cookie string
		sub    sessionpush.Subscription
	}
	sessions := make([]session, n)
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	each := func(what string, f func(i int) error) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		next := make(chan int)
		for range 32 {
			wg.Go(func() {
				for i := range next {
					if err := f(i); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("%s %d: %w", what, i, err))
						mu.Unlock()
					}
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d %s failed; first: %v", len(errs), n, what, errs[0])
		}
	}
	do := func(method, path, cookie, ctype, body string) (*http.Response, []byte, error) {
		req, _ := http.NewRequest(method, s.URL+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	cookieOf := func(resp *http.Response, old string) string {
		for _, ck := range resp.Cookies() {
			if ck.Name == sessionName {
				return ck.Name + "=" + ck.Value
			}
		}
		return old
	}
	each("sign-ins and subscriptions", func(i int) error {
		resp, _, err := do("POST", "/login", "", "application/x-www-form-urlencoded", url.Values{"user": {fmt.Sprintf("u%d", i)}}.Encode())
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusSeeOther {
			return fmt.Errorf("login: %s", resp.Status)
		}
		cookie := cookieOf(resp, "")
		resp, body, err := do("POST", "/subscribe", cookie, "", "")
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/subscribe: %s %s", resp.Status, body)
		}
		sessions[i].cookie = cookieOf(resp, cookie)
		return json.Unmarshal(body, &sessions[i].sub)
	})
	t.Logf("%d sessions signed in and subscribed in %v", n, time.Since(start).Round(time.Millisecond))

	// The listeners, in a process of their own.
	listeners := make([]farm.Listener, n)
	for i, se := range sessions {
		listeners[i] = farm.Listener{Addr: host, Path: se.sub.URL, LastEventID: se.sub.Cursor,
			Header: http.Header{"Cookie": {se.cookie}, "Origin": {s.URL}}}
	}
	connectStart := time.Now()
	f := farm.Start(t, farm.Options{Listeners: listeners, Parallel: 64})
	t.Logf("%d listeners connected in %v", n, time.Since(connectStart).Round(time.Millisecond))
	s.waitForNchanSubscribers(t, n)

	// One push per session, through nginx and the app.
	const key = "scale"
	pushStart := time.Now()
	each("pushes", func(i int) error {
		resp, body, err := do("POST", "/push", sessions[i].cookie, "application/json", string(farm.Body(key, time.Now(), 0)))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("push: %s %s", resp.Status, body)
		}
		return nil
	})
	st, err := f.Wait(key, n, 2*time.Minute)
	if err != nil {
		t.Fatalf("deliveries: %d of %d: %v", st.Count, n, err)
	}
	t.Logf("%d pushes delivered in %v; latency p50 %v, p99 %v, max %v", n, time.Since(pushStart).Round(time.Millisecond), st.P50, st.P99, st.Max)
	verdict, err := f.Check([]string{key}, 500*time.Millisecond)
	if err != nil || verdict != "" {
		t.Errorf("every listener once: %q %v", verdict, err)
	}
	counters, err := f.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if counters.Connected != n || counters.Errors != 0 || counters.Disconnects != 0 {
		t.Errorf("farm: %+v; want %d connected, no error, no disconnect", counters, n)
	}
	if log := s.ErrorLog(); strings.Contains(log, "worker_connections are not enough") || strings.Contains(log, "Too many open files") {
		t.Errorf("nginx's error.log:\n%s", lastLines(log, 20))
	}
	status := s.nchanStatus(t)
	t.Logf("RESULT listeners=%d connected=%d errors=%d disconnects=%d deliveries=%d p99=%v nchan_shared_memory_used=%s nchan_channels=%s nchan_subscribers=%s total=%v",
		n, counters.Connected, counters.Errors, counters.Disconnects, st.Count, st.P99,
		status["shared memory used"], status["channels"], status["subscribers"], time.Since(start).Round(time.Second))
}

// waitForNchanSubscribers waits until Nchan counts n subscribers in all.
func (s *nginxSite) waitForNchanSubscribers(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got := s.nchanStatus(t)["subscribers"]
		if got == fmt.Sprint(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Nchan counts %s subscribers; want %d", got, n)
		}
	}
}

var statusLine = regexp.MustCompile(`(?m)^([a-z ]+): (\S+)\s*$`)

// nchanStatus reads the publisher server's /nchan_status.
func (s *nginxSite) nchanStatus(t *testing.T) map[string]string {
	t.Helper()
	status, body := 0, ""
	resp, err := http.Get(pubURL(s.Nginx) + "/nchan_status")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status, body = resp.StatusCode, string(b)
	}
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /nchan_status on the publisher server: %d %v", status, err)
	}
	m := map[string]string{}
	for _, l := range statusLine.FindAllStringSubmatch(body, -1) {
		m[l[1]] = l[2]
	}
	return m
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
