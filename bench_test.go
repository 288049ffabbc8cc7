package sessionpush_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// BenchmarkMiddleware compares the Middleware on a signed-in request whose
// channel is bound against the floor: a bare CookieStore.Get of the same
// session, gob-encoded (gorilla's default) and JSON-encoded (sessionpushtest.JSONSerializer;
// the user ID is then a number, which comes back as float64). Run:
// go test -run '^$' -bench Middleware -benchmem .
// bench.TestSuite measures the same as ratios (figure 1).
func BenchmarkMiddleware(b *testing.B) {
	for _, tc := range []struct {
		name string
		json bool
		user any
	}{
		{"gob", false, "alice"},
		{"json", true, 1234567}, // a numeric user ID, as JSON sessions often hold
	} {
		b.Run(tc.name, func(b *testing.B) { benchmarkMiddleware(b, tc.json, tc.user) })
	}
}

func benchmarkMiddleware(b *testing.B, useJSON bool, user any) {
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	want := user
	if useJSON {
		for _, c := range store.Codecs {
			c.(*securecookie.SecureCookie).SetSerializer(sessionpushtest.JSONSerializer{})
		}
		if n, ok := user.(int); ok {
			want = float64(n)
		}
	}
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	// A signed-in session with its channel bound, as a browser sends it.
	login := mgr.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = user
		if err := s.Save(r, w); err != nil {
			b.Error(err)
		}
	}))
	rec := httptest.NewRecorder()
	login.ServeHTTP(rec, httptest.NewRequest("POST", "/login", nil))
	cookie := rec.Result().Cookies()[0]
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(cookie)
	w := &discardWriter{h: http.Header{}}

	b.Run("bare-get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := req.Clone(req.Context())
			if s, err := store.Get(r, "session"); err != nil || s.Values["user"] != want {
				b.Fatal(err, s.Values["user"])
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

// discardWriter keeps one header map, as net/http's ResponseWriter does,
// and discards the rest.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header       { return w.h }
func (*discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (*discardWriter) WriteHeader(int)             {}
