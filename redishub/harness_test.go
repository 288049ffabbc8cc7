package redishub_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/internal/servers"
	"github.com/sessionpush/sessionpush/redishub"
	"github.com/sessionpush/sessionpush/redisstore"
	"github.com/sessionpush/sessionpush/relaytest"
)

// TestMain fails the package's tests when a goroutine outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const wait = 10 * time.Second

var prefixes atomic.Int64

// instance is one application instance: a Relay with its own Redis client,
// a Manager on it with redisstore, and its HTTP server.
type instance struct {
	relay  *redishub.Relay
	mgr    *sessionpush.Manager
	srv    *httptest.Server
	client *redis.Client
}

// cluster is n instances sharing one Redis and one session key.
type cluster struct {
	redis *servers.Redis
	inst  []*instance
}

type clusterOpts struct {
	relay     redishub.Options
	broadcast string
	idle      time.Duration
}

func newCluster(t *testing.T, n int, o clusterOpts) *cluster {
	t.Helper()
	c := &cluster{redis: servers.StartRedis(t)}
	key := securecookie.GenerateRandomKey(32)
	p := prefixes.Add(1)
	if o.relay.Prefix == "" {
		o.relay.Prefix = fmt.Sprintf("hub%d:", p)
	}
	if o.relay.Logger == nil {
		o.relay.Logger = slog.New(slog.DiscardHandler)
	}
	for range n {
		client := redis.NewClient(&redis.Options{Addr: c.redis.Addr})
		r, err := redishub.New(client, o.relay)
		if err != nil {
			t.Fatal(err)
		}
		store := sessions.NewCookieStore(key)
		store.Options.HttpOnly, store.Options.SameSite = true, http.SameSiteLaxMode
		mgr, err := sessionpush.New(sessionpush.Config{
			Sessions: store, Relay: r, Logger: slog.New(slog.DiscardHandler),
			Store:            redisstore.New(client, redisstore.Options{Prefix: fmt.Sprintf("store%d:", p)}),
			BroadcastChannel: o.broadcast, IdleTimeout: o.idle,
		})
		if err != nil {
			t.Fatal(err)
		}
		in := &instance{relay: r, mgr: mgr, client: client, srv: httptest.NewServer(newApp(mgr, store))}
		c.inst = append(c.inst, in)
		t.Cleanup(func() { // before Redis stops: cleanups run last first
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			if err := mgr.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			in.srv.Close()
			client.Close()
		})
	}
	return c
}

func newApp(mgr *sessionpush.Manager, store sessions.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		s.Save(r, w)
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		if err := mgr.SignOut(w, r); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.Handle("POST /subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		if ch := sessionpush.CurrentChannel(r); ch != nil {
			io.WriteString(w, ch.ID)
		}
	})
	return mgr.Middleware(mux)
}

var users atomic.Int64

// browser is a signed-in session; its cookies hold on every instance (same
// host, same key).
type browser struct {
	client *http.Client
}

func (c *cluster) login(t testing.TB, at *instance) *browser {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	b := &browser{client: &http.Client{Jar: jar}}
	resp, err := b.client.PostForm(at.srv.URL+"/login", url.Values{"user": {fmt.Sprintf("user%d", users.Add(1))}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return b
}

func (b *browser) subscribe(t testing.TB, at *instance) sessionpush.Subscription {
	t.Helper()
	resp, err := b.client.Post(at.srv.URL+"/subscribe", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sub sessionpush.Subscription
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/subscribe: %d %v", resp.StatusCode, err)
	}
	return sub
}

func (b *browser) logout(t testing.TB, at *instance) {
	t.Helper()
	resp, err := b.client.Post(at.srv.URL+"/logout", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/logout: %d", resp.StatusCode)
	}
}

// stream is an EventSource listener; its events arrive on events, which is
// closed when the stream ends (ended tells whether it ended with ":410").
type stream struct {
	events chan relaytest.Event
	cancel context.CancelFunc
}

// listen opens an EventSource stream of path (the channel's URL) on at,
// after lastID if not empty, and returns its status and, for 200, the
// stream.
func (b *browser) listen(t testing.TB, at *instance, path, lastID string) (*stream, int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", at.srv.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode
	}
	s := &stream{events: make(chan relaytest.Event, 1024), cancel: cancel}
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); err != nil || line != ": hi\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	go func() {
		defer close(s.events)
		defer resp.Body.Close()
		for {
			ev, ok := relaytest.ReadEvent(rd)
			if !ok {
				return
			}
			s.events <- ev
		}
	}()
	t.Cleanup(s.close)
	return s, 200
}

func (b *browser) mustListen(t testing.TB, at *instance, path, lastID string) *stream {
	t.Helper()
	s, code := b.listen(t, at, path, lastID)
	if code != 200 {
		t.Fatalf("listen on %s: %d", at.srv.URL, code)
	}
	return s
}

func (s *stream) close() {
	s.cancel()
	for range s.events {
	}
}

// next returns the stream's next event, failing after wait.
func (s *stream) next(t testing.TB) relaytest.Event {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			t.Fatal("stream ended")
		}
		return ev
	case <-time.After(wait):
		t.Fatal("no event")
	}
	return relaytest.Event{}
}

// ended waits for the stream to end.
func (s *stream) ended(t testing.TB) {
	t.Helper()
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			t.Errorf("unexpected event %+v before the end", ev)
		case <-time.After(wait):
			t.Fatal("stream did not end")
		}
	}
}

// quiet checks that nothing more comes within a short while.
func (s *stream) quiet(t testing.TB) {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if ok {
			t.Errorf("unexpected event %+v", ev)
		}
	case <-time.After(200 * time.Millisecond):
	}
}

// waitListeners waits until Info, asked on inst, counts n listeners of
// channel, making every instance write its counts.
func (c *cluster) waitListeners(t testing.TB, at *instance, channel string, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for _, in := range c.inst {
			in.relay.Sync(context.Background())
		}
		info, err := at.relay.Info(context.Background(), channel)
		if err == nil && info.Listeners == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("listeners of %s: %+v, %v; want %d", channel, info, err, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}
