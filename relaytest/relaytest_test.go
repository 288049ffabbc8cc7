package relaytest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/relaytest"
)

const (
	maxListeners = 3
	maxSize      = 64 << 10 // the kit's default; nginx: client_max_body_size 64k
)

// newApp returns the handler of a small application on mgr: sign-in,
// /subscribe, the embedded relay's listening endpoint, /authorize for Nchan,
// and /whoami, which tells the session's bound channel.
func newApp(mgr *sessionpush.Manager, store sessions.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		s.Save(r, w)
	})
	mux.Handle("POST /subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.Handle("GET /authorize", mgr.AuthorizeHandler())
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		if ch := sessionpush.CurrentChannel(r); ch != nil {
			io.WriteString(w, ch.ID)
		}
	})
	return mgr.Middleware(mux)
}

func newStore() *sessions.CookieStore {
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	store.Options.HttpOnly, store.Options.SameSite = true, http.SameSiteLaxMode
	return store
}

// sessions signs browsers in at base, where the application answers.
type signer struct {
	base string
	n    atomic.Int64
}

func (s *signer) login(t testing.TB) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.PostForm(s.base+"/login", url.Values{"user": {fmt.Sprintf("user%d", s.n.Add(1))}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	return c
}

func (s *signer) newSession(t testing.TB) relaytest.Session {
	t.Helper()
	c := s.login(t)
	resp, err := c.Post(s.base+"/subscribe", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sub sessionpush.Subscription
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/subscribe: %d %v", resp.StatusCode, err)
	}
	return relaytest.Session{Client: c, Channel: sub.Channel, Cursor: sub.Cursor, URL: s.base + sub.URL}
}

func (s *signer) unopened(t testing.TB) relaytest.Session {
	t.Helper()
	c := s.login(t)
	resp, err := c.Get(s.base + "/whoami")
	if err != nil {
		t.Fatal(err)
	}
	id, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(id) != 36 {
		t.Fatalf("/whoami = %q", id)
	}
	return relaytest.Session{Client: c, Channel: string(id), URL: s.base + "/sub/" + string(id)}
}

func TestEmbedded(t *testing.T) { runEmbedded(t, nil) }

// runEmbedded runs the suite on the embedded relay, its application wrapped
// by wrap when not nil.
func runEmbedded(t *testing.T, wrap func(http.Handler) http.Handler) {
	store := newStore()
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Hub: hub.Options{MaxListeners: maxListeners}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	app := newApp(mgr, store)
	if wrap != nil {
		app = wrap(app)
	}
	srv := httptest.NewServer(app)
	t.Cleanup(func() {
		mgr.Shutdown(context.Background())
		srv.Close()
	})
	s := &signer{base: srv.URL}
	relaytest.Run(t, relaytest.Target{
		Relay:          mgr.Relay(),
		NewSession:     s.newSession,
		Unopened:       s.unopened,
		MaxListeners:   maxListeners,
		MaxMessageSize: maxSize,
	})
}

// TestSuiteCatchesReplay proves that the suite holds a relay to the rule
// for listeners without a position: the embedded relay behind a wrapper
// that makes such listeners replay the buffer (as Nchan does with
// "nchan_subscriber_first_message oldest") must fail exactly that check.
// The failing run is a child process, so that its failures are its own.
func TestSuiteCatchesReplay(t *testing.T) {
	if os.Getenv("RELAYTEST_REPLAYING_TARGET") != "" {
		runEmbedded(t, func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/sub/") && r.Header.Get("Last-Event-ID") == "" &&
					r.URL.Query().Get("last_event_id") == "" && r.Header.Get("If-Modified-Since") == "" {
					r.Header.Set("Last-Event-ID", relay.NoCursor) // from the oldest buffered message
				}
				next.ServeHTTP(w, r)
			})
		})
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSuiteCatchesReplay$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "RELAYTEST_REPLAYING_TARGET=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the suite passed a relay that replays the buffer to listeners without a position:\n%s", out)
	}
	var failed []string
	for line := range strings.SplitSeq(string(out), "\n") {
		if _, name, ok := strings.Cut(line, "--- FAIL: "); ok {
			failed = append(failed, strings.Fields(name)[0])
		}
	}
	slices.Sort(failed)
	want := []string{
		"TestSuiteCatchesReplay",
		"TestSuiteCatchesReplay/NoPositionWaitsForNext",
		"TestSuiteCatchesReplay/NoPositionWaitsForNext/EventSource",
		"TestSuiteCatchesReplay/NoPositionWaitsForNext/LongPoll",
	}
	if !slices.Equal(failed, want) {
		t.Errorf("failed checks %q, want %q; output:\n%s", failed, want, out)
	}
}

// nchanConf puts the application and Nchan on one origin: nginx proxies the
// application, serves listeners itself after asking the application's
// /authorize, and takes publishes from 127.0.0.1 only.
const nchanConf = `
{{template "main" .}}
error_log error.log info;
events { worker_connections 1024; }
http {
  access_log access.log;
{{template "temp_paths"}}
  upstream app { server {{.App}}; }
  server {
    listen {{.Addr}};
    location = /pub { return 404; }
    location ~ "^/pub/([0-9a-f-]{36})$" {
      allow 127.0.0.1;
      deny all;
      nchan_publisher http;
      nchan_channel_id $1;
      client_max_body_size 64k;
    }
    location ~ "^/sub/([0-9a-f-]{36})$" {
      nchan_subscriber;
      nchan_channel_id $1;
      nchan_subscribe_existing_channels_only on;
      nchan_subscriber_first_message newest;
      nchan_max_channel_subscribers 3;
      nchan_authorize_request /authorize;
    }
    location = /authorize {
      internal;
      proxy_pass http://app/authorize;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Channel-Id $nchan_channel_id;
    }
    location / {
      proxy_pass http://app;
      proxy_buffering off;
    }
  }
}
`

func TestNchan(t *testing.T) {
	store := newStore()
	srv := httptest.NewUnstartedServer(nil)
	ngx := servers.StartNginxWith(t, nchanConf, servers.NginxOptions{
		Vars:      map[string]any{"App": srv.Listener.Addr().String()},
		ReadyPath: "/pub/00000000-0000-4000-8000-000000000000",
	})
	client, err := nchan.New(ngx.URL+"/pub/{channel}", nchan.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Relay: client, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = newApp(mgr, store)
	srv.Start()
	t.Cleanup(srv.Close)
	s := &signer{base: ngx.URL}
	relaytest.Run(t, relaytest.Target{
		Relay:          client,
		NewSession:     s.newSession,
		Unopened:       s.unopened,
		MaxListeners:   maxListeners,
		MaxMessageSize: maxSize,
	})
	if t.Failed() {
		log := ngx.ErrorLog()
		t.Logf("nginx error.log (tail):\n%s", log[max(0, strings.LastIndex(log[:max(0, len(log)-4000)], "\n")):])
	}
}
