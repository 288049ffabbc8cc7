package sessionpush_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"

	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// A complete application on the embedded relay: sign in, subscribe, push,
// and listen by long-poll, all over real HTTP.
func Example() {
	store := sessions.NewCookieStore([]byte("a 32-byte key for this example.."))
	store.Options.HttpOnly, store.Options.SameSite, store.Options.Secure = true, http.SameSiteLaxMode, false
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store})
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Shutdown(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = r.FormValue("user")
		s.Save(r, w)
	})
	mux.Handle("POST /subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.HandleFunc("POST /export", func(w http.ResponseWriter, r *http.Request) {
		// ... start the export, then tell this session's browser:
		sessionpush.CurrentChannel(r).PushJSON(r.Context(), map[string]string{"export": "ready"})
	})
	srv := httptest.NewServer(mgr.Middleware(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	browser.PostForm(srv.URL+"/login", url.Values{"user": {"alice"}})
	resp, _ := browser.Post(srv.URL+"/subscribe", "", nil)
	var sub sessionpush.Subscription
	jsonDecode(resp, &sub)
	browser.Post(srv.URL+"/export", "", nil)

	req, _ := http.NewRequest("GET", srv.URL+sub.URL, nil)
	req.Header.Set("Last-Event-ID", sub.Cursor) // resume from the moment of /subscribe
	resp, _ = browser.Do(req)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("Content-Type"), string(body))
	// Output: 200 application/json {"export":"ready"}
}

// Testing a handler that pushes, without any server, with sessionpushtest.
func ExampleCurrentChannel() {
	kit, _ := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	handler := kit.Manager.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ch := sessionpush.CurrentChannel(r); ch != nil {
			ch.PushJSON(r.Context(), "hello "+ch.User)
		}
	}))

	r, channel, _ := kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice")
	handler.ServeHTTP(httptest.NewRecorder(), r)

	for _, m := range kit.Relay.Messages(channel) {
		fmt.Println(m.ContentType, string(m.Body))
	}
	// Output: application/json "hello alice"
}

// Pushing from background work, to every session of a user and to everyone.
func ExampleManager_PushUser() {
	kit, _ := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice") // laptop
	kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice") // phone
	kit.SignIn(httptest.NewRequest("GET", "/", nil), "bob")

	n, err := kit.Manager.PushUser(ctx, "alice", map[string]int{"unread": 3})
	fmt.Println("alice's sessions:", n, err)
	res, err := kit.Manager.Broadcast(ctx, "maintenance at noon")
	fmt.Println("everyone:", res.Channels, "channels,", res.Listeners, "listening,", err)
	// Output:
	// alice's sessions: 2 <nil>
	// everyone: 3 channels, 0 listening, <nil>
}

func jsonDecode(resp *http.Response, v any) {
	defer resp.Body.Close()
	if err := json.NewDecoder(bufio.NewReader(resp.Body)).Decode(v); err != nil {
		log.Fatal(err)
	}
}
