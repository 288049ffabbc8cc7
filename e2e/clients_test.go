package e2e

// The machinery of the conformance tests with clients the project did not
// write (nchansubscriber_test.go, eventsource_test.go): the npm packages in
// clients/, a site per relay behind a network that the test can cut, and
// signed-in sessions driven from Go.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
)

// clientsDir holds package.json and package-lock.json, which pin the npm
// packages under test; `npm ci` there installs them (.ci/run does).
const clientsDir = "clients"

// skipOrFail skips the test with why, or fails it when the environment
// requires every server.
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(servers.RequireEnv) == "1" {
		t.Fatalf("%s (%s=1: these tests may not skip)", why, servers.RequireEnv)
	}
	t.Skipf("%s; skipped (set %s=1 to fail instead)", why, servers.RequireEnv)
}

// needExample skips the test with -short, when TestMain builds nothing.
func needExample(t *testing.T) {
	t.Helper()
	if testing.Short() || exampleBin == "" {
		t.Skip("-short: the tests that run the example are skipped")
	}
}

// needNode returns the path of node, or skips (fails) the test without it.
func needNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		skipOrFail(t, "node not found: it runs the npm package eventsource")
	}
	return node
}

// needNPMPackages checks that clients/node_modules holds exactly the
// versions that clients/package.json pins, and skips (fails) the test if
// not.
func needNPMPackages(t *testing.T) {
	t.Helper()
	var pkg struct{ Dependencies map[string]string }
	b, err := os.ReadFile(filepath.Join(clientsDir, "package.json"))
	if err == nil {
		err = json.Unmarshal(b, &pkg)
	}
	if err != nil {
		t.Fatalf("%s/package.json: %v", clientsDir, err)
	}
	for name, want := range pkg.Dependencies {
		var got struct{ Version string }
		b, err := os.ReadFile(filepath.Join(clientsDir, "node_modules", name, "package.json"))
		if err == nil {
			err = json.Unmarshal(b, &got)
		}
		switch {
		case err != nil:
			skipOrFail(t, fmt.Sprintf("npm package %s@%s is not installed (%v): run `npm ci` in e2e/%s", name, want, err, clientsDir))
		case got.Version != want:
			skipOrFail(t, fmt.Sprintf("npm package %s is %s, package.json pins %s: run `npm ci` in e2e/%s", name, got.Version, want, clientsDir))
		}
	}
}

// thirdPartySite is the example on one relay, reached through a network
// that the test can cut. Clients listen through the network (Base); the
// test signs in and pushes straight to the site (site.URL), which a cut
// does not reach. Nchan's config lets in the network's Origin.
type thirdPartySite struct {
	*site
	net  *network
	Base string // "http://" + the network's address
}

// startThirdPartySite starts the example on relay behind a network of its
// own, for the whole test.
func startThirdPartySite(t *testing.T, relay string) *thirdPartySite {
	t.Helper()
	n := newNetwork(t)
	s := startSite(t, relay, n.Addr())
	n.connect(strings.TrimPrefix(s.URL, "http://"))
	return &thirdPartySite{site: s, net: n, Base: "http://" + n.Addr()}
}

// cut cuts the network and returns how many connections it had refused
// before, for waitRefused.
func (s *thirdPartySite) cut() int {
	before := s.net.refusals()
	s.net.cut()
	return before
}

// waitRefused waits until the network has refused a connection since it
// had refused before: a client tried to reconnect during the cut.
func (s *thirdPartySite) waitRefused(t *testing.T, before int) {
	t.Helper()
	waitUntil(t, "a connection attempt during the cut", func() bool { return s.net.refusals() > before })
}

// waitUntil checks cond every 20 ms until it holds, for up to waitTimeout.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(waitTimeout); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: nothing after %v", what, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscription is the JSON answer of /subscribe.
type subscription struct {
	Channel string `json:"channel"`
	Cursor  string `json:"cursor"`
	URL     string `json:"url"`
}

// account is a signed-in session of the example, driven from Go: the
// session cookie is in Jar.
type account struct {
	t      *testing.T
	site   string // the site's own URL, not through the network
	Jar    http.CookieJar
	client *http.Client
}

// signIn signs user in on the site, as the sign-in form does.
func signIn(t *testing.T, siteURL, user string) *account {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	a := &account{t: t, site: siteURL, Jar: jar, client: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
	resp, err := a.client.PostForm(siteURL+"/login", url.Values{"user": {user}}) // 303 to /, followed
	if err != nil {
		t.Fatalf("sign in as %s: %v", user, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || a.cookie() == nil {
		t.Fatalf("sign in as %s: %s, session cookie %v", user, resp.Status, a.cookie())
	}
	return a
}

// cookie returns the session cookie, or nil.
func (a *account) cookie() *http.Cookie {
	u, _ := url.Parse(a.site)
	for _, c := range a.Jar.Cookies(u) {
		if c.Name == "session" { // sessionpush.Config.SessionName's default
			return c
		}
	}
	return nil
}

// cookieHeader returns the Cookie header that the session's requests carry.
func (a *account) cookieHeader() string {
	c := a.cookie()
	return c.Name + "=" + c.Value
}

// subscribe calls /subscribe and returns its answer.
func (a *account) subscribe() subscription {
	a.t.Helper()
	resp, err := a.client.Get(a.site + "/subscribe")
	if err != nil {
		a.t.Fatalf("/subscribe: %v", err)
	}
	defer resp.Body.Close()
	var s subscription
	if resp.StatusCode != http.StatusOK {
		a.t.Fatalf("/subscribe: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		a.t.Fatalf("/subscribe: %v", err)
	}
	if s.Channel == "" || s.Cursor == "" || s.URL == "" {
		a.t.Fatalf("/subscribe answered %+v: want channel, cursor and url", s)
	}
	return s
}

// subscribeBetween sets up the starting-from-the-cursor case: a message
// "before" is pushed, /subscribe answers the same channel with a newer
// cursor, and "m1" is pushed after it, before any client listens. A client
// started from the returned cursor must get m1 and not "before".
func (a *account) subscribeBetween() subscription {
	a.t.Helper()
	first := a.subscribe()
	a.push("before")
	sub := a.subscribe()
	if sub.Channel != first.Channel || sub.Cursor == first.Cursor {
		a.t.Fatalf("/subscribe after a push: %+v; before it: %+v: want the same channel, a newer cursor", sub, first)
	}
	a.push("m1") // after /subscribe, before the client listens
	return sub
}

// push pushes each text, a JSON string, to the session's own channel. When
// the example's send limit answers 429, it waits the Retry-After that the
// example gives (one token a second) and tries again.
func (a *account) push(texts ...string) {
	a.t.Helper()
	for _, text := range texts {
		for {
			body, _ := json.Marshal(text)
			resp, err := a.client.Post(a.site+"/push", "application/json", strings.NewReader(string(body)))
			if err != nil {
				a.t.Fatalf("push %q: %v", text, err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests {
				secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
				time.Sleep(time.Duration(max(secs, 1)) * time.Second) // the limit's own pace, not a synchronisation
				continue
			}
			if resp.StatusCode != http.StatusNoContent {
				a.t.Fatalf("push %q: %s", text, resp.Status)
			}
			break
		}
	}
}

// numbered returns prefix1 … prefixN, from first to last.
func numbered(prefix string, first, last int) []string {
	var out []string
	for i := first; i <= last; i++ {
		out = append(out, prefix+strconv.Itoa(i))
	}
	return out
}

// received is a message as a client reports it: its ID and data.
type received struct {
	ID   string `json:"id"`
	Data string `json:"data"`
}

// text decodes the data, a JSON string as account.push sends; other data
// comes back as it is.
func (r received) text() string {
	var s string
	if json.Unmarshal([]byte(r.Data), &s) != nil {
		return r.Data
	}
	return s
}

// checkMessages fails the test unless got is want, in order, each once,
// each with a message ID, no two the same.
func checkMessages(t *testing.T, who string, got []received, want []string) {
	t.Helper()
	texts := make([]string, len(got))
	ids := map[string]bool{}
	for i, m := range got {
		texts[i] = m.text()
		if m.ID == "" || ids[m.ID] {
			t.Errorf("%s: message %q has ID %q: want a fresh one", who, texts[i], m.ID)
		}
		ids[m.ID] = true
	}
	if strings.Join(texts, ",") != strings.Join(want, ",") {
		t.Fatalf("%s received %q; want %q", who, texts, want)
	}
}

// streamLog records what an EventSource client outside the browser
// reports: the Last-Event-ID of each request, opens, errors, messages.
type streamLog struct {
	mu       sync.Mutex
	requests []string // Last-Event-ID of each request, "" for none
	opens    int
	errors   []string
	messages []received
}

func (l *streamLog) request(lastEventID string) {
	l.mu.Lock()
	l.requests = append(l.requests, lastEventID)
	l.mu.Unlock()
}

func (l *streamLog) open() {
	l.mu.Lock()
	l.opens++
	l.mu.Unlock()
}

func (l *streamLog) error(err string) {
	l.mu.Lock()
	l.errors = append(l.errors, err)
	l.mu.Unlock()
}

func (l *streamLog) message(m received) {
	l.mu.Lock()
	l.messages = append(l.messages, m)
	l.mu.Unlock()
}

// snapshot returns copies of what was recorded.
func (l *streamLog) snapshot() (requests []string, opens int, errs []string, messages []received) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.requests...), l.opens, append([]string(nil), l.errors...), append([]received(nil), l.messages...)
}

// waitMessages waits until the client has received len(want) messages,
// and checks them.
func (l *streamLog) waitMessages(t *testing.T, who string, want ...string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%s to receive %d messages", who, len(want)), func() bool {
		_, _, _, m := l.snapshot()
		return len(m) >= len(want)
	})
	_, _, _, m := l.snapshot()
	checkMessages(t, who, m, want)
}
