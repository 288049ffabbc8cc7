package sessionpush_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
)

// BenchmarkMiddleware compares the Middleware on a signed-in request whose
// channel is bound against the floor: a bare CookieStore.Get of the same
// session (gob-encoded, gorilla's default). Run:
// go test -run '^$' -bench Middleware -benchmem .
func BenchmarkMiddleware(b *testing.B) {
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	// A signed-in session with its channel bound, as a browser sends it.
	login := mgr.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = "alice"
		s.Save(r, w)
	}))
	rec := httptest.NewRecorder()
	login.ServeHTTP(rec, httptest.NewRequest("POST", "/login", nil))
	cookie := rec.Result().Cookies()[0]
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(cookie)
	w := discardWriter{}

	b.Run("bare-get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := req.Clone(req.Context())
			if s, err := store.Get(r, "session"); err != nil || s.Values["user"] != "alice" {
				b.Fatal(err)
			}
		}
	})
	h := mgr.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sessionpush.CurrentChannel(r) == nil {
			b.Fatal("no channel")
		}
	}))
	b.Run("middleware", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(w, req.Clone(req.Context()))
		}
	})
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (discardWriter) WriteHeader(int)             {}
