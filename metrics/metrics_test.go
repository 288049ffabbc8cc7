package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/metrics"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// fill sets every uint64 field of the struct v points to, recursively, to
// a distinct number from 1 up, and returns how many it set.
func fill(v reflect.Value, next *uint64) int {
	n := 0
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Uint64:
			*next++
			f.SetUint(*next)
			n++
		case reflect.Struct:
			n += fill(f, next)
		}
	}
	return n
}

func write(t *testing.T, s sessionpush.Stats) (*exposition, string) {
	t.Helper()
	var buf bytes.Buffer
	if err := metrics.Write(&buf, s); err != nil {
		t.Fatal(err)
	}
	x, err := parseExposition(buf.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	return x, buf.String()
}

// TestWriteKitStats gives every counter of Stats a distinct value and
// finds each in its series: a field written to the wrong series, or not at
// all, fails.
func TestWriteKitStats(t *testing.T) {
	var s sessionpush.Stats
	var next uint64
	fields := fill(reflect.ValueOf(&s).Elem(), &next)
	s.OpenChannels = 4242
	x, text := write(t, s)

	type want struct {
		name   string
		labels []string
		value  uint64
	}
	c, f, r := s.ChannelsClosed, s.PushFailures, s.Refused
	given := map[string][]string{
		"subscribe": {"method", "cross_origin", "not_signed_in", "error"},
		"listen":    {"not_signed_in", "not_owner", "invalid_id", "no_endpoint", "relay_refused", "error"},
		"authorize": {"not_signed_in", "not_owner", "invalid_id", "error"},
	}
	impossible := 0
	wants := []want{
		{"sessionpush_channels_opened_total", nil, s.ChannelsOpened},
		{"sessionpush_channels_closed_total", []string{"cause", "logout"}, c.Logout},
		{"sessionpush_channels_closed_total", []string{"cause", "replaced"}, c.Replaced},
		{"sessionpush_channels_closed_total", []string{"cause", "closed"}, c.Closed},
		{"sessionpush_channels_closed_total", []string{"cause", "expired"}, c.Expired},
		{"sessionpush_channels_closed_total", []string{"cause", "lost"}, c.Lost},
		{"sessionpush_pushes_total", nil, s.Pushes},
		{"sessionpush_push_failures_total", []string{"reason", "invalid_id"}, f.InvalidID},
		{"sessionpush_push_failures_total", []string{"reason", "too_large"}, f.TooLarge},
		{"sessionpush_push_failures_total", []string{"reason", "encode"}, f.Encode},
		{"sessionpush_push_failures_total", []string{"reason", "not_found"}, f.NotFound},
		{"sessionpush_push_failures_total", []string{"reason", "store"}, f.Store},
		{"sessionpush_push_failures_total", []string{"reason", "relay"}, f.Relay},
		{"sessionpush_failed_relay_requests_total", nil, s.RelayErrors},
	}
	for _, h := range []struct {
		name string
		r    sessionpush.Refusals
	}{{"subscribe", r.Subscribe}, {"listen", r.Listen}, {"authorize", r.Authorize}} {
		for _, v := range []struct {
			reason string
			n      uint64
		}{
			{"method", h.r.Method}, {"cross_origin", h.r.CrossOrigin}, {"not_signed_in", h.r.NotSignedIn},
			{"not_owner", h.r.NotOwner}, {"invalid_id", h.r.InvalidID}, {"no_endpoint", h.r.NoEndpoint},
			{"relay_refused", h.r.RelayRefused}, {"error", h.r.Error},
		} {
			labels := []string{"handler", h.name, "reason", v.reason}
			if !slices.Contains(given[h.name], v.reason) {
				// A reason the handler never gives: not written.
				if _, ok := x.value("sessionpush_refused_requests_total", labels...); ok {
					t.Errorf("refused%v written", labels)
				}
				impossible++
				continue
			}
			wants = append(wants, want{"sessionpush_refused_requests_total", labels, v.n})
		}
	}
	if len(wants)+impossible != fields {
		t.Fatalf("Stats has %d counters, the test knows %d: a new field needs a series", fields, len(wants))
	}
	seen := map[uint64]bool{}
	for _, w := range wants {
		got, ok := x.value(w.name, w.labels...)
		if !ok || got != float64(w.value) {
			t.Errorf("%s%v = %v (%v), want %d", w.name, w.labels, got, ok, w.value)
		}
		seen[w.value] = true
	}
	if len(seen) != len(wants) {
		t.Errorf("the test maps %d distinct values to %d series", len(seen), len(wants))
	}
	if v, ok := x.value("sessionpush_channels_open"); !ok || v != 4242 {
		t.Errorf("sessionpush_channels_open = %v, %v", v, ok)
	}
	// Every kit family has HELP and the right TYPE; counters end in _total.
	samples := 0
	for _, fam := range x.Families {
		samples += len(fam.Samples)
		if !fam.HasHelp || fam.Help == "" {
			t.Errorf("%s: no HELP", fam.Name)
		}
		wantType := "counter"
		if !strings.HasSuffix(fam.Name, "_total") {
			wantType = "gauge"
		}
		if fam.Type != wantType {
			t.Errorf("%s: TYPE %s, want %s", fam.Name, fam.Type, wantType)
		}
	}
	if want := len(wants) + 2; samples != want { // + channels_open, invalid_relay_stats
		t.Errorf("%d samples, want %d:\n%s", samples, want, text)
	}

	// A Store that cannot count: no gauge rather than a false number.
	s.OpenChannels = -1
	x, _ = write(t, s)
	if _, ok := x.byName["sessionpush_channels_open"]; ok {
		t.Error("sessionpush_channels_open written for an unknown count")
	}
}

// TestWriteRelayStats writes awkward relay stats: every label value and
// help text must come back unchanged through the strict reader, and the
// invalid ones must be left out and counted.
func TestWriteRelayStats(t *testing.T) {
	weird := "a \"quoted\" \\back\\slash\nnew line, {braces}=,é"
	stats := []relay.Stat{
		{Name: "listeners", Help: "Listeners now.", Gauge: true, Labels: [][2]string{{"transport", "websocket"}}, Value: 3},
		{Name: "publishes_total", Help: "Help with \\ and\nnewline \"quotes\".", Value: 7},
		{Name: "listeners", Gauge: true, Labels: [][2]string{{"transport", "eventsource"}}, Value: 2}, // same family, later
		{Name: "weird", Gauge: true, Labels: [][2]string{{"v", weird}, {"_x", ""}}, Value: math.Inf(1)},
		{Name: "odd_values", Gauge: true, Labels: [][2]string{{"k", "nan"}}, Value: math.NaN()},
		{Name: "odd_values", Gauge: true, Labels: [][2]string{{"k", "neg"}}, Value: math.Inf(-1)},
		{Name: "odd_values", Gauge: true, Labels: [][2]string{{"k", "tiny"}}, Value: 1e-300},
		{Name: "odd_values", Gauge: true, Labels: [][2]string{{"k", "big"}}, Value: 1e300},
		{Name: "bad_utf8", Gauge: true, Labels: [][2]string{{"v", "a\xffb"}}, Value: 1},
		// Invalid: each is left out and counted.
		{Name: "", Value: 1},
		{Name: "has-dash", Value: 1},
		{Name: "has space", Value: 1},
		{Name: "x", Labels: [][2]string{{"9lead", "v"}}, Value: 1},
		{Name: "x", Labels: [][2]string{{"__reserved", "v"}}, Value: 1},
		{Name: "x", Labels: [][2]string{{"a-b", "v"}}, Value: 1},
		{Name: "x", Labels: [][2]string{{"a", "1"}, {"a", "2"}}, Value: 1},
		{Name: "listeners", Gauge: false, Labels: [][2]string{{"transport", "longpoll"}}, Value: 1}, // type differs
		{Name: "listeners", Gauge: true, Labels: [][2]string{{"transport", "websocket"}}, Value: 9}, // repeated
		{Name: "publishes_total", Value: -1},                                                        // repeated series, and negative
		{Name: "negative_total", Value: -5},                                                         // a counter going down
		{Name: "nan_total", Value: math.NaN()},
	}
	const invalid = 12
	x, text := write(t, sessionpush.Stats{OpenChannels: -1, Relay: stats})

	if v, _ := x.value("sessionpush_invalid_relay_stats"); v != invalid {
		t.Errorf("invalid relay stats: %v, want %d\n%s", v, invalid, text)
	}
	checks := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"sessionpush_relay_listeners", []string{"transport", "websocket"}, 3},
		{"sessionpush_relay_listeners", []string{"transport", "eventsource"}, 2},
		{"sessionpush_relay_publishes_total", nil, 7},
		{"sessionpush_relay_weird", []string{"v", weird, "_x", ""}, math.Inf(1)},
		{"sessionpush_relay_odd_values", []string{"k", "neg"}, math.Inf(-1)},
		{"sessionpush_relay_odd_values", []string{"k", "tiny"}, 1e-300},
		{"sessionpush_relay_odd_values", []string{"k", "big"}, 1e300},
		{"sessionpush_relay_bad_utf8", []string{"v", "a\uFFFDb"}, 1},
	}
	for _, c := range checks {
		if v, ok := x.value(c.name, c.labels...); !ok || v != c.value {
			t.Errorf("%s%q = %v (%v), want %v", c.name, c.labels, v, ok, c.value)
		}
	}
	if v, ok := x.value("sessionpush_relay_odd_values", "k", "nan"); !ok || !math.IsNaN(v) {
		t.Errorf("NaN gauge: %v %v", v, ok)
	}
	fam := x.byName["sessionpush_relay_publishes_total"]
	if fam.Type != "counter" || fam.Help != "Help with \\ and\nnewline \"quotes\"." || len(fam.Samples) != 1 {
		t.Errorf("publishes_total: %+v", fam)
	}
	if fam := x.byName["sessionpush_relay_listeners"]; fam.Type != "gauge" || fam.Help != "Listeners now." || len(fam.Samples) != 2 {
		t.Errorf("listeners: %+v", fam)
	}
	for _, bad := range []string{"sessionpush_relay_", "sessionpush_relay_x", "sessionpush_relay_negative_total", "sessionpush_relay_nan_total"} {
		if _, ok := x.byName[bad]; ok {
			t.Errorf("%s written", bad)
		}
	}
	// Relay families follow the kit's, in the order of first appearance.
	var relayOrder []string
	for _, f := range x.Families {
		if name, ok := strings.CutPrefix(f.Name, metrics.RelayPrefix); ok {
			relayOrder = append(relayOrder, name)
		} else if len(relayOrder) > 0 {
			t.Errorf("kit family %s after relay families", f.Name)
		}
	}
	if want := []string{"listeners", "publishes_total", "weird", "odd_values", "bad_utf8"}; !reflect.DeepEqual(relayOrder, want) {
		t.Errorf("relay families %v, want %v", relayOrder, want)
	}
}

type failingWriter struct{ n int }

var errDisk = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > 100 {
		return 0, errDisk
	}
	w.n += len(p)
	return len(p), nil
}

func TestWriteError(t *testing.T) {
	if err := metrics.Write(&failingWriter{}, sessionpush.Stats{}); !errors.Is(err, errDisk) {
		t.Fatalf("error %v, want %v", err, errDisk)
	}
}

// reportingRelay is a recording relay that reports a stat of its own.
type reportingRelay struct {
	*sessionpushtest.Relay
}

func (reportingRelay) RelayStats() []relay.Stat {
	return []relay.Stat{{Name: "up", Help: "Always 1.", Gauge: true, Value: 1}}
}

// TestHandler scrapes a live application over HTTP: the numbers follow
// what the application does, and only GET and HEAD are served.
func TestHandler(t *testing.T) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(metrics.Handler(kit.Manager))
	defer srv.Close()

	scrape := func() *exposition {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; version=0.0.4; charset=utf-8" {
			t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
			t.Errorf("Content-Length %q for %d bytes", cl, len(body))
		}
		x, err := parseExposition(string(body))
		if err != nil {
			t.Fatalf("%v\n%s", err, body)
		}
		return x
	}
	val := func(x *exposition, name string, labels ...string) float64 {
		t.Helper()
		v, ok := x.value(name, labels...)
		if !ok {
			t.Fatalf("no %s%v", name, labels)
		}
		return v
	}

	x := scrape()
	if v := val(x, "sessionpush_channels_open"); v != 0 {
		t.Errorf("open channels at start: %v", v)
	}
	_, ch, err := kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if err := kit.Manager.PushJSON(ctx, ch, "hi"); err != nil {
			t.Fatal(err)
		}
	}
	kit.Manager.PushJSON(ctx, "nope", "hi")
	if err := kit.Manager.CloseChannel(ctx, ch); err != nil {
		t.Fatal(err)
	}
	x = scrape()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sessionpush_channels_opened_total", nil, 1},
		{"sessionpush_channels_closed_total", []string{"cause", "closed"}, 1},
		{"sessionpush_channels_open", nil, 0},
		{"sessionpush_pushes_total", nil, 3},
		{"sessionpush_push_failures_total", []string{"reason", "invalid_id"}, 1},
	} {
		if v := val(x, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if len(x.Families) == 0 || strings.HasPrefix(x.Families[len(x.Families)-1].Name, metrics.RelayPrefix) {
		t.Error("relay stats from a relay that reports none")
	}

	// HEAD: headers alone.
	resp, err := http.Head(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength <= 0 {
		t.Errorf("HEAD: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	// Other methods: 405.
	resp, err = http.Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestHandlerRelayStats: a relay that reports stats has them scraped.
func TestHandlerRelayStats(t *testing.T) {
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions: sessions.NewCookieStore(securecookie.GenerateRandomKey(32)),
		Relay:    reportingRelay{sessionpushtest.NewRelay()},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	metrics.Handler(mgr).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	x, err := parseExposition(rec.Body.String())
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := x.value("sessionpush_relay_up"); !ok || v != 1 || x.byName["sessionpush_relay_up"].Type != "gauge" {
		t.Errorf("sessionpush_relay_up: %v %v\n%s", v, ok, rec.Body.String())
	}
}

// BenchmarkHandler measures one scrape: a snapshot written in the text
// format, with ten relay stats. Run: go test -run '^$' -bench . -benchmem ./metrics/
func BenchmarkHandler(b *testing.B) {
	var stats []relay.Stat
	for i := range 10 {
		stats = append(stats, relay.Stat{Name: "listeners", Help: "Listeners.", Gauge: true, Labels: [][2]string{{"n", strconv.Itoa(i)}}, Value: float64(i)})
	}
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions: sessions.NewCookieStore(securecookie.GenerateRandomKey(32)),
		Relay:    fixedStatsRelay{sessionpushtest.NewRelay(), stats},
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	h := metrics.Handler(mgr)
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

type fixedStatsRelay struct {
	*sessionpushtest.Relay
	stats []relay.Stat
}

func (r fixedStatsRelay) RelayStats() []relay.Stat { return r.stats }

// TestHandlerEmbeddedRelay scrapes a Manager on its embedded relay, with a
// listener connected: whatever stats that relay reports must all come out,
// valid, none left out.
func TestHandlerEmbeddedRelay(t *testing.T) {
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	store.Options.HttpOnly, store.Options.SameSite = true, http.SameSiteLaxMode
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		s, _ := store.Get(r, "session")
		s.Values["user"] = "alice"
		s.Save(r, w)
	})
	mux.Handle("POST /subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	mux.Handle("GET /metrics", metrics.Handler(mgr))
	srv := httptest.NewServer(mgr.Middleware(mux))
	defer srv.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := mgr.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	if resp, err := c.Post(srv.URL+"/login", "", nil); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	req, _ := http.NewRequest("POST", srv.URL+"/subscribe", nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// An EventSource listener, open while we scrape.
	req, _ = http.NewRequest("GET", srv.URL+"/sub/"+string(id), nil)
	req.Header.Set("Accept", "text/event-stream")
	stream, err := c.Do(req)
	if err != nil || stream.StatusCode != 200 {
		t.Fatalf("listen: %v %v", err, stream)
	}
	defer stream.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := mgr.Relay().Info(context.Background(), string(id))
		if err == nil && info.Listeners == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listener not seen: %+v %v", info, err)
		}
		time.Sleep(5 * time.Millisecond)
	}

	resp, err = c.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	x, err := parseExposition(string(body))
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	if v, _ := x.value("sessionpush_invalid_relay_stats"); v != 0 {
		t.Errorf("the embedded relay reports %v malformed stats:\n%s", v, body)
	}
	if v, _ := x.value("sessionpush_channels_opened_total"); v != 1 {
		t.Errorf("channels opened: %v", v)
	}
	rep, ok := mgr.Relay().(relay.StatsReporter)
	if !ok {
		t.Log("the embedded relay reports no stats of its own")
		return
	}
	n := 0
	for _, f := range x.Families {
		if strings.HasPrefix(f.Name, metrics.RelayPrefix) {
			n += len(f.Samples)
		}
	}
	if want := len(rep.RelayStats()); n != want {
		t.Errorf("%d relay samples, the relay reports %d:\n%s", n, want, body)
	}
}

// FuzzWrite writes relay stats of any name, help, labels and value: the
// exposition must always read back strictly, and a stat that is written
// must come back unchanged (invalid UTF-8 aside, which becomes U+FFFD).
// Run: go test -run '^$' -fuzz FuzzWrite -fuzztime 30s ./metrics/
func FuzzWrite(f *testing.F) {
	f.Add("listeners", "Help.", "transport", "websocket", 1.5, true)
	f.Add("x_total", "a\\b\nc\"", "l", "\"\\\n", -1.0, false)
	f.Add("", "", "__r", "\xff", math.NaN(), true)
	f.Add("a b", "h", "9", "v", math.Inf(1), false)
	f.Fuzz(func(t *testing.T, name, help, lname, lvalue string, v float64, gauge bool) {
		st := relay.Stat{Name: name, Help: help, Gauge: gauge, Labels: [][2]string{{lname, lvalue}}, Value: v}
		var buf bytes.Buffer
		if err := metrics.Write(&buf, sessionpush.Stats{OpenChannels: -1, Relay: []relay.Stat{st, st}}); err != nil {
			t.Fatal(err)
		}
		x, err := parseExposition(buf.String())
		if err != nil {
			t.Fatalf("%v\n%s", err, buf.String())
		}
		invalid, _ := x.value("sessionpush_invalid_relay_stats")
		fam := x.byName[metrics.RelayPrefix+name]
		switch {
		case invalid == 2: // left out, both
			if fam != nil && len(fam.Samples) > 0 {
				t.Fatalf("left out and written:\n%s", buf.String())
			}
		case invalid == 1: // the repeat left out
			got, ok := x.value(metrics.RelayPrefix+name, lname, strings.ToValidUTF8(lvalue, "\uFFFD"))
			if !ok || !(got == v || math.IsNaN(got) && math.IsNaN(v)) {
				t.Fatalf("stat %+v came back as %v (%v):\n%s", st, got, ok, buf.String())
			}
			wantType := "counter"
			if gauge {
				wantType = "gauge"
			}
			if fam.Type != wantType || fam.Help != strings.ToValidUTF8(help, "\uFFFD") {
				t.Fatalf("family %+v for %+v", fam, st)
			}
		default:
			t.Fatalf("%v invalid of 2:\n%s", invalid, buf.String())
		}
	})
}

// serverStore is a Store that counts its channels only by CountChannels,
// as a store on a server does, and can be made to fail.
type serverStore struct {
	sessionpush.Store
	mem  *sessionpush.MemoryStore
	fail atomic.Bool
	ctxs chan context.Context // the contexts counted in
}

func (s *serverStore) CountChannels(ctx context.Context) (int, error) {
	s.ctxs <- ctx
	if s.fail.Load() {
		return 0, errors.New("server down")
	}
	return s.mem.Len(), nil
}

// TestHandlerCountingStore: with a Store that counts at a cost, each
// scrape counts once, in the scrape's context; when counting fails, the
// gauge is left out and the rest is served.
func TestHandlerCountingStore(t *testing.T) {
	mem := sessionpush.NewMemoryStore()
	st := &serverStore{Store: mem, mem: mem, ctxs: make(chan context.Context, 10)}
	store := sessions.NewCookieStore(securecookie.GenerateRandomKey(32))
	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Store: st, Relay: sessionpushtest.NewRelay(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	mem.Add(context.Background(), sessionpush.Record{ID: "00000000-0000-4000-8000-000000000001", User: "alice"})
	srv := httptest.NewServer(metrics.Handler(mgr))
	defer srv.Close()

	scrape := func() *exposition {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		x, err := parseExposition(string(body))
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	x := scrape()
	if v, ok := x.value("sessionpush_channels_open"); !ok || v != 1 {
		t.Errorf("sessionpush_channels_open = %v, %v", v, ok)
	}
	select {
	case ctx := <-st.ctxs:
		if ctx == context.Background() || ctx.Done() == nil {
			t.Error("counted outside the scrape's context")
		}
	default:
		t.Error("not counted")
	}
	if len(st.ctxs) != 0 {
		t.Errorf("%d more counts in one scrape", len(st.ctxs))
	}

	st.fail.Store(true)
	x = scrape()
	<-st.ctxs
	if _, ok := x.value("sessionpush_channels_open"); ok {
		t.Error("gauge written when counting failed")
	}
	if _, ok := x.value("sessionpush_pushes_total"); !ok {
		t.Error("the rest left out when counting failed")
	}
}
