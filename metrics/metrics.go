// Package metrics exposes the stats of a [sessionpush.Manager] to
// Prometheus, in the text exposition format version 0.0.4, using nothing but
// the standard library: an application that does not import it pays
// nothing, and one that does takes on no Prometheus client library.
//
//	mux.Handle("GET /metrics", metrics.Handler(mgr))
//
// The kit's own metrics are:
//
//	sessionpush_channels_opened_total         counter  channels opened by SubscribeHandler
//	sessionpush_channels_closed_total         counter  by cause: logout, replaced, closed, expired, lost
//	sessionpush_channels_open                 gauge    open channels in the Store; absent when it cannot count
//	sessionpush_pushes_total                  counter  messages the relay accepted
//	sessionpush_push_failures_total           counter  by reason: invalid_id, too_large, encode, not_found, store, relay
//	sessionpush_failed_relay_requests_total   counter  relay requests that failed
//	sessionpush_refused_requests_total        counter  by handler and reason:
//	                                                   subscribe: method, cross_origin, not_signed_in, error;
//	                                                   listen: not_signed_in, not_owner, invalid_id,
//	                                                   no_endpoint, relay_refused, error;
//	                                                   authorize: not_signed_in, not_owner, invalid_id, error
//	sessionpush_invalid_relay_stats           gauge    relay stats left out (see below)
//
// [sessionpush.Stats] documents what each counts. The relay's own stats
// ([relay.Stat], when the relay implements [relay.StatsReporter]) follow,
// each named sessionpush_relay_ and its Name, such as
// sessionpush_relay_listeners. A relay stat whose Name is not snake_case
// ([a-zA-Z0-9_]), whose label names are not Prometheus label names or
// repeat, whose type differs from an earlier stat of the same Name, that
// repeats the Name and labels of an earlier one, or a counter whose value is
// negative or NaN, is left out and counted in
// sessionpush_invalid_relay_stats, so that one faulty stat never spoils a
// scrape.
package metrics

import (
	"bufio"
	"bytes"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/relay"
)

// ContentType is the media type of the text exposition format version
// 0.0.4, which Handler answers with.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// RelayPrefix is the prefix of the names of the relay's stats.
const RelayPrefix = "sessionpush_relay_"

// Handler returns a handler that answers GET and HEAD with m's stats
// ([sessionpush.Manager.Stats]) in the Prometheus text format, and 405 to
// other methods. The gauge sessionpush_channels_open comes from the Store:
// from memory for a MemoryStore, or by one request within the scrape's
// context for a Store that implements [sessionpush.ChannelCounter]; when
// the Store cannot count, or fails to, the gauge is left out. Mount it
// where only the monitoring system reaches: the numbers name no user, but
// they tell how busy the application is.
func Handler(m *sessionpush.Manager) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		s := m.Stats()
		if s.OpenChannels < 0 {
			if n, err := m.CountChannels(r.Context()); err == nil {
				s.OpenChannels = n
			}
		}
		var buf bytes.Buffer
		Write(&buf, s) // a bytes.Buffer does not fail
		h := w.Header()
		h.Set("Content-Type", ContentType)
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Length", strconv.Itoa(buf.Len()))
		if r.Method == http.MethodHead {
			return
		}
		w.Write(buf.Bytes())
	})
}

// Write writes s in the Prometheus text format to w. It returns the first
// error of w.
func Write(w io.Writer, s sessionpush.Stats) error {
	bw := bufio.NewWriter(w)
	e := &encoder{w: bw}

	e.family("sessionpush_channels_opened_total", "Channels opened by SubscribeHandler.", false)
	e.sample("sessionpush_channels_opened_total", nil, float64(s.ChannelsOpened))

	e.family("sessionpush_channels_closed_total", "Channels closed, by cause.", false)
	c := s.ChannelsClosed
	for _, v := range []struct {
		cause string
		n     uint64
	}{{"logout", c.Logout}, {"replaced", c.Replaced}, {"closed", c.Closed}, {"expired", c.Expired}, {"lost", c.Lost}} {
		e.sample("sessionpush_channels_closed_total", [][2]string{{"cause", v.cause}}, float64(v.n))
	}

	if s.OpenChannels >= 0 {
		e.family("sessionpush_channels_open", "Open channels in the Store.", true)
		e.sample("sessionpush_channels_open", nil, float64(s.OpenChannels))
	}

	e.family("sessionpush_pushes_total", "Messages the relay accepted.", false)
	e.sample("sessionpush_pushes_total", nil, float64(s.Pushes))

	e.family("sessionpush_push_failures_total", "Pushes that published nothing, by reason.", false)
	f := s.PushFailures
	for _, v := range []struct {
		reason string
		n      uint64
	}{{"invalid_id", f.InvalidID}, {"too_large", f.TooLarge}, {"encode", f.Encode}, {"not_found", f.NotFound}, {"store", f.Store}, {"relay", f.Relay}} {
		e.sample("sessionpush_push_failures_total", [][2]string{{"reason", v.reason}}, float64(v.n))
	}

	e.family("sessionpush_failed_relay_requests_total", "Relay requests that failed, not counting \"no such channel\" answers.", false)
	e.sample("sessionpush_failed_relay_requests_total", nil, float64(s.RelayErrors))

	e.family("sessionpush_refused_requests_total", "Requests that the kit's handlers refused, by handler and reason.", false)
	for _, h := range []struct {
		name string
		r    sessionpush.Refusals
	}{{"subscribe", s.Refused.Subscribe}, {"listen", s.Refused.Listen}, {"authorize", s.Refused.Authorize}} {
		r := h.r
		for _, v := range []struct {
			reason string
			n      uint64
		}{
			{"method", r.Method}, {"cross_origin", r.CrossOrigin}, {"not_signed_in", r.NotSignedIn},
			{"not_owner", r.NotOwner}, {"invalid_id", r.InvalidID}, {"no_endpoint", r.NoEndpoint},
			{"relay_refused", r.RelayRefused}, {"error", r.Error},
		} {
			if slices.Contains(reasons[h.name], v.reason) {
				e.sample("sessionpush_refused_requests_total", [][2]string{{"handler", h.name}, {"reason", v.reason}}, float64(v.n))
			}
		}
	}

	families, invalid := relayFamilies(s.Relay)
	e.family("sessionpush_invalid_relay_stats", "Relay stats left out of this exposition as malformed.", true)
	e.sample("sessionpush_invalid_relay_stats", nil, float64(invalid))
	for _, fam := range families {
		e.family(fam.name, fam.help, fam.gauge)
		for _, st := range fam.stats {
			e.sample(fam.name, st.Labels, st.Value)
		}
	}
	if e.err != nil {
		return e.err
	}
	return bw.Flush()
}

// reasons are the reasons that each handler gives; the others stay zero
// and are not written.
var reasons = map[string][]string{
	"subscribe": {"method", "cross_origin", "not_signed_in", "error"},
	"listen":    {"not_signed_in", "not_owner", "invalid_id", "no_endpoint", "relay_refused", "error"},
	"authorize": {"not_signed_in", "not_owner", "invalid_id", "error"},
}

// family is the relay's stats of one name.
type family struct {
	name  string
	help  string
	gauge bool
	stats []relay.Stat
	seen  []string // label sets, for repeats
}

// relayFamilies groups the valid stats by name, in the order of their
// first appearance, and counts the invalid ones.
func relayFamilies(stats []relay.Stat) ([]*family, int) {
	var (
		fams    []*family
		byName  = map[string]*family{}
		invalid int
	)
	for _, st := range stats {
		if !validName(st.Name) || !validLabels(st.Labels) || !st.Gauge && !(st.Value >= 0) {
			invalid++
			continue
		}
		name := RelayPrefix + st.Name
		fam := byName[name]
		if fam == nil {
			fam = &family{name: name, help: st.Help, gauge: st.Gauge}
			byName[name] = fam
			fams = append(fams, fam)
		}
		key := labelKey(st.Labels)
		if fam.gauge != st.Gauge || slices.Contains(fam.seen, key) {
			invalid++
			continue
		}
		if fam.help == "" {
			fam.help = st.Help
		}
		fam.seen = append(fam.seen, key)
		fam.stats = append(fam.stats, st)
	}
	return fams, invalid
}

// validName reports whether n is a metric name suffix: [a-zA-Z0-9_]+.
func validName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; !(c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// validLabels reports whether every label name is a Prometheus label name
// ([a-zA-Z_][a-zA-Z0-9_]*, not starting with "__"), none repeated.
func validLabels(labels [][2]string) bool {
	for i, l := range labels {
		n := l[0]
		if !validName(n) || '0' <= n[0] && n[0] <= '9' || strings.HasPrefix(n, "__") {
			return false
		}
		for _, o := range labels[:i] {
			if o[0] == n {
				return false
			}
		}
	}
	return true
}

// labelKey identifies a label set whatever the order of its labels.
func labelKey(labels [][2]string) string {
	pairs := make([]string, len(labels))
	for i, l := range labels {
		pairs[i] = l[0] + "\x00" + l[1]
	}
	slices.Sort(pairs)
	return strings.Join(pairs, "\x01")
}

// encoder writes the text format, keeping the first error.
type encoder struct {
	w   *bufio.Writer
	err error
	num []byte // scratch for numbers
}

func (e *encoder) str(ss ...string) {
	for _, s := range ss {
		if e.err == nil {
			_, e.err = e.w.WriteString(s)
		}
	}
}

// family writes the HELP and TYPE lines of a metric family.
func (e *encoder) family(name, help string, gauge bool) {
	if help != "" {
		e.str("# HELP ", name, " ", escape(help, false), "\n")
	}
	typ := "counter"
	if gauge {
		typ = "gauge"
	}
	e.str("# TYPE ", name, " ", typ, "\n")
}

// sample writes one sample line.
func (e *encoder) sample(name string, labels [][2]string, v float64) {
	e.str(name)
	for i, l := range labels {
		sep := ","
		if i == 0 {
			sep = "{"
		}
		e.str(sep, l[0], `="`, escape(l[1], true), `"`)
	}
	if len(labels) > 0 {
		e.str("}")
	}
	e.num = appendValue(append(e.num[:0], ' '), v)
	e.num = append(e.num, '\n')
	if e.err == nil {
		_, e.err = e.w.Write(e.num)
	}
}

// escape escapes a HELP text (backslash, line feed) or a label value (also
// the double quote), and makes it valid UTF-8.
func escape(s string, quote bool) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, string(utf8.RuneError))
	}
	if !strings.ContainsAny(s, "\\\n\"") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '"' && quote:
			b.WriteString(`\"`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// appendValue appends v as Prometheus reads it: Go float syntax, with
// +Inf, -Inf and NaN spelled so.
func appendValue(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
