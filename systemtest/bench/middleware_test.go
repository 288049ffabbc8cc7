package bench

import (
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header {
	if w.h == nil {
		w.h = http.Header{}
	}
	clear(w.h)
	return w.h
}
func (*discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (*discardWriter) WriteHeader(int)             {}

// middlewareCase is a signed-in request and the two handlers to compare.
type middlewareCase struct {
	name      string
	req       *http.Request
	bare, mw  func(*http.Request) error
	wantUser  any
	cookieLen int
}

// newMiddlewareCase signs a user in through the Middleware (so the session
// has its channel bound, as a browser sends it) with the given codec.
func newMiddlewareCase(t testing.TB, name string, useJSON bool, user any) middlewareCase {
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	if useJSON {
		for _, c := range store.Codecs {
			c.(*securecookie.SecureCookie).SetSerializer(sessionpushtest.JSONSerializer{})
		}
	}
	// The relay counts its calls: a signed-in request must make none.
	counter := &countingRelay{Relay: hub.New(hub.Options{Logger: slog.New(slog.DiscardHandler)})}
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Relay: counter, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	login := mgr.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = user
		if err := s.Save(r, w); err != nil {
			t.Errorf("%s: save: %v", name, err)
		}
	}))
	rec := httptest.NewRecorder()
	login.ServeHTTP(rec, httptest.NewRequest("POST", "/login", nil))
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("%s: login set %d cookies", name, len(cookies))
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.AddCookie(cookies[0])
	counter.reset()

	want := user
	if useJSON {
		if n, ok := user.(int); ok {
			want = float64(n)
		}
	}
	var errNoChannel = fmt.Errorf("%s: the Middleware found no channel", name)
	var seen error
	h := mgr.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sessionpush.CurrentChannel(r) == nil {
			seen = errNoChannel
		}
	}))
	w := &discardWriter{}
	return middlewareCase{
		name: name, req: req, wantUser: want, cookieLen: len(cookies[0].Value),
		bare: func(r *http.Request) error {
			s, err := store.Get(r, "session")
			if err != nil {
				return err
			}
			if s.Values["user"] != want {
				return fmt.Errorf("%s: user %#v, want %#v", name, s.Values["user"], want)
			}
			return nil
		},
		mw: func(r *http.Request) error {
			seen = nil
			h.ServeHTTP(w, r)
			if n := counter.calls(); n != 0 {
				return fmt.Errorf("%s: the Middleware made %d relay calls on a signed-in request", name, n)
			}
			return seen
		},
	}
}

// middlewareFigures: figure 1, the cost per signed-in request of the
// Middleware against a bare CookieStore.Get of the same session.
func middlewareFigures(t *testing.T, cfg suiteConfig, out *rows) {
	cases := []middlewareCase{
		newMiddlewareCase(t, "gob", false, "alice"),
		newMiddlewareCase(t, "json", true, 1234567), // a numeric user ID
	}
	for _, c := range cases {
		// Correctness, in both modes: the bare Get finds the user, the
		// Middleware the channel, on fresh clones of the request.
		for range 3 {
			if err := c.bare(c.req.Clone(c.req.Context())); err != nil {
				t.Fatal(err)
			}
			if err := c.mw(c.req.Clone(c.req.Context())); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !cfg.full {
		return
	}
	// Many short benchmarks, bare and Middleware in turns (alternating which
	// goes first), so that the machine's drift hits both alike.
	if f := flag.Lookup("test.benchtime"); f != nil {
		old := f.Value.String()
		f.Value.Set("200ms")
		defer f.Value.Set(old)
	}
	for _, c := range cases {
		var ns, allocs, bytes, blocks [2][]float64 // [0] bare, [1] middleware
		for run := range 4*cfg.runs + 1 {
			for k := range 2 {
				i := (k + run) % 2
				f := []func(*http.Request) error{c.bare, c.mw}[i]
				var failed error
				r := testing.Benchmark(func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						if err := f(c.req.Clone(c.req.Context())); err != nil {
							failed = err
						}
					}
				})
				if failed != nil {
					t.Fatal(failed)
				}
				ns[i] = append(ns[i], float64(r.NsPerOp()))
				allocs[i] = append(allocs[i], float64(r.AllocsPerOp()))
				bytes[i] = append(bytes[i], float64(r.AllocedBytesPerOp()))
			}
			b, m, err := interleaved(c, 400*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			blocks[0], blocks[1] = append(blocks[0], b), append(blocks[1], m)
		}
		note := fmt.Sprintf("%s session, cookie %d B", c.name, c.cookieLen)
		out.add(row{fig: "1", measure: "time per signed-in request", note: note,
			subject: "Middleware", base: "bare CookieStore.Get", unit: "ns/op",
			subj: ns[1], baseV: ns[0], target: "≤ 1.10×",
			holds: func(_, _, r float64) bool { return r <= 1.10 }})
		out.add(row{fig: "1", measure: "time per signed-in request, median of interleaved blocks of 32", note: note,
			subject: "Middleware", base: "bare CookieStore.Get", unit: "ns/op",
			subj: blocks[1], baseV: blocks[0], target: "≤ 1.10×",
			holds: func(_, _, r float64) bool { return r <= 1.10 }})
		out.add(row{fig: "1", measure: "allocations per request", note: note,
			subject: "Middleware", base: "bare CookieStore.Get", unit: "allocs/op",
			subj: allocs[1], baseV: allocs[0], target: "≤ 3 extra",
			holds: func(s, b, _ float64) bool { return s-b <= 3 }})
		out.add(row{fig: "1", measure: "bytes allocated per request", note: note,
			subject: "Middleware", base: "bare CookieStore.Get", unit: "B/op",
			subj: bytes[1], baseV: bytes[0]})
	}
}

// interleaved times c's bare Get and Middleware in alternating blocks of 32
// requests for about d, so that both meet the same moments of the
// machine's load, and returns each one's median ns per request over its
// blocks: a block that the scheduler stalls does not count.
func interleaved(c middlewareCase, d time.Duration) (bare, mw float64, err error) {
	const block = 32
	reqs := make([]*http.Request, block)
	var per [2][]float64
	for start, n := time.Now(), 0; time.Since(start) < d; n++ {
		for k := range 2 {
			i := (k + n) % 2
			f := []func(*http.Request) error{c.bare, c.mw}[i]
			for j := range reqs {
				reqs[j] = c.req.Clone(c.req.Context())
			}
			t0 := time.Now()
			for _, r := range reqs {
				if err := f(r); err != nil {
					return 0, 0, err
				}
			}
			per[i] = append(per[i], float64(time.Since(t0))/block)
		}
	}
	return median(per[0]), median(per[1]), nil
}
