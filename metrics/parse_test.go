package metrics_test

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// A strict reader of the Prometheus text exposition format 0.0.4, for the
// tests: it refuses anything that format does not allow, and the things
// that Prometheus's own parser takes but that a correct exposition never
// has (a family split in two, a series twice, TYPE after samples).

type series struct {
	Labels map[string]string
	Value  float64
}

type metricFamily struct {
	Name    string
	Help    string
	HasHelp bool
	Type    string
	Samples []series
}

// exposition is a parsed exposition: families in order, by name.
type exposition struct {
	Families []*metricFamily
	byName   map[string]*metricFamily
}

// value returns the value of the series name{labels}; labels are
// name/value pairs.
func (x *exposition) value(name string, labels ...string) (float64, bool) {
	f := x.byName[name]
	if f == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, s := range f.Samples {
		if mapsEqual(s.Labels, want) {
			return s.Value, true
		}
	}
	return 0, false
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func parseExposition(text string) (*exposition, error) {
	if text == "" {
		return &exposition{byName: map[string]*metricFamily{}}, nil
	}
	if !utf8.ValidString(text) {
		return nil, fmt.Errorf("not UTF-8")
	}
	if !strings.HasSuffix(text, "\n") {
		return nil, fmt.Errorf("last line does not end with a line feed")
	}
	x := &exposition{byName: map[string]*metricFamily{}}
	var cur *metricFamily // family of the last line
	closed := map[string]bool{}
	seen := map[string]bool{}
	get := func(name string) (*metricFamily, error) {
		if cur != nil && cur.Name == name {
			return cur, nil
		}
		if closed[name] {
			return nil, fmt.Errorf("family %s is split", name)
		}
		if cur != nil {
			closed[cur.Name] = true
		}
		f := &metricFamily{Name: name}
		x.Families = append(x.Families, f)
		x.byName[name] = f
		cur = f
		return f, nil
	}
	for n, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", n+1, line, fmt.Sprintf(format, a...))
		}
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "# HELP ") || strings.HasPrefix(line, "# TYPE "):
			kind, rest := line[2:6], line[7:]
			name, arg, ok := strings.Cut(rest, " ")
			if !ok && kind == "TYPE" {
				return nil, fail("no type")
			}
			if !isMetricName(name) {
				return nil, fail("bad metric name")
			}
			f, err := get(name)
			if err != nil {
				return nil, fail("%v", err)
			}
			if len(f.Samples) > 0 {
				return nil, fail("%s after samples", kind)
			}
			if kind == "HELP" {
				if f.HasHelp {
					return nil, fail("second HELP")
				}
				h, err := unescape(arg, false)
				if err != nil {
					return nil, fail("%v", err)
				}
				f.Help, f.HasHelp = h, true
				continue
			}
			if f.Type != "" {
				return nil, fail("second TYPE")
			}
			if !slices.Contains([]string{"counter", "gauge", "histogram", "summary", "untyped"}, arg) {
				return nil, fail("bad type %q", arg)
			}
			f.Type = arg
		case strings.HasPrefix(line, "#"):
			continue // a comment
		default:
			name, labels, value, err := parseSample(line)
			if err != nil {
				return nil, fail("%v", err)
			}
			f, err := get(name)
			if err != nil {
				return nil, fail("%v", err)
			}
			key := name + "{" + labelString(labels) + "}"
			if seen[key] {
				return nil, fail("series repeated")
			}
			seen[key] = true
			if f.Type == "counter" && (value < 0 || math.IsNaN(value)) {
				return nil, fail("counter value %v", value)
			}
			f.Samples = append(f.Samples, series{Labels: labels, Value: value})
		}
	}
	return x, nil
}

func labelString(labels map[string]string) string {
	var pairs []string
	for k, v := range labels {
		pairs = append(pairs, strconv.Quote(k)+"="+strconv.Quote(v))
	}
	slices.Sort(pairs)
	return strings.Join(pairs, ",")
}

// parseSample reads `name{l="v",...} value [timestamp]`.
func parseSample(line string) (string, map[string]string, float64, error) {
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return "", nil, 0, fmt.Errorf("no value")
	}
	name := line[:i]
	if !isMetricName(name) {
		return "", nil, 0, fmt.Errorf("bad metric name %q", name)
	}
	labels := map[string]string{}
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 {
				return "", nil, 0, fmt.Errorf("label without =")
			}
			ln := rest[:eq]
			if !isLabelName(ln) {
				return "", nil, 0, fmt.Errorf("bad label name %q", ln)
			}
			if _, dup := labels[ln]; dup {
				return "", nil, 0, fmt.Errorf("label %s twice", ln)
			}
			rest = rest[eq+1:]
			if !strings.HasPrefix(rest, `"`) {
				return "", nil, 0, fmt.Errorf("label value not quoted")
			}
			// The value runs to the first unescaped quote.
			end := -1
			for j := 1; j < len(rest); j++ {
				if rest[j] == '\\' {
					j++
					continue
				}
				if rest[j] == '"' {
					end = j
					break
				}
			}
			if end < 0 {
				return "", nil, 0, fmt.Errorf("unterminated label value")
			}
			v, err := unescape(rest[1:end], true)
			if err != nil {
				return "", nil, 0, err
			}
			labels[ln] = v
			rest = rest[end+1:]
			switch {
			case strings.HasPrefix(rest, ","):
				rest = rest[1:]
			case strings.HasPrefix(rest, "}"):
			default:
				return "", nil, 0, fmt.Errorf("junk after label value: %q", rest)
			}
		}
	}
	if !strings.HasPrefix(rest, " ") {
		return "", nil, 0, fmt.Errorf("no space before the value")
	}
	fields := strings.Split(rest[1:], " ")
	if len(fields) < 1 || len(fields) > 2 {
		return "", nil, 0, fmt.Errorf("want value [timestamp], have %q", rest)
	}
	v, err := parseValue(fields[0])
	if err != nil {
		return "", nil, 0, err
	}
	if len(fields) == 2 {
		if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
			return "", nil, 0, fmt.Errorf("bad timestamp %q", fields[1])
		}
	}
	return name, labels, v, nil
}

func parseValue(s string) (float64, error) {
	switch s {
	case "NaN":
		return math.NaN(), nil
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	}
	if strings.ContainsAny(s, "_xXpPiInN") { // Go syntax that Prometheus refuses
		return 0, fmt.Errorf("bad value %q", s)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("bad value %q", s)
	}
	return v, nil
}

// unescape undoes the escapes of a label value (\\, \", \n) or of a HELP
// text (\\, \n); any other backslash, or a raw quote in a label value, or
// a raw line feed, is an error.
func unescape(s string, label bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\n':
			return "", fmt.Errorf("raw line feed")
		case c == '"' && label:
			return "", fmt.Errorf("raw quote in label value")
		case c != '\\':
			b.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("trailing backslash")
		}
		i++
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case '"':
			if !label {
				return "", fmt.Errorf(`\" in HELP`)
			}
			b.WriteByte('"')
		default:
			return "", fmt.Errorf("bad escape \\%c", s[i])
		}
	}
	return b.String(), nil
}

func isMetricName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9' {
			continue
		}
		return false
	}
	return true
}

func isLabelName(s string) bool {
	return isMetricName(s) && !strings.Contains(s, ":") && !strings.HasPrefix(s, "__")
}

// TestParserRefuses shows that the reader above refuses what it must, so
// that the tests that rely on it can fail.
func TestParserRefuses(t *testing.T) {
	bad := map[string]string{
		"no final line feed":      "a 1",
		"bad metric name":         "1a 1\n",
		"dash in name":            "a-b 1\n",
		"bad label name":          "a{1x=\"v\"} 1\n",
		"reserved label name":     "a{__x=\"v\"} 1\n",
		"unquoted label value":    "a{x=v} 1\n",
		"unterminated label":      "a{x=\"v} 1\n",
		"bad escape":              "a{x=\"\\t\"} 1\n",
		"label twice":             "a{x=\"1\",x=\"2\"} 1\n",
		"no value":                "a\n",
		"bad value":               "a 1.2.3\n",
		"hex value":               "a 0x10\n",
		"go infinity":             "a Inf\n",
		"junk after value":        "a 1 2 3\n",
		"split family":            "a 1\nb 1\na{x=\"y\"} 1\n",
		"repeated series":         "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n",
		"TYPE after sample":       "a 1\n# TYPE a gauge\n",
		"two TYPEs":               "# TYPE a gauge\n# TYPE a counter\na 1\n",
		"two HELPs":               "# HELP a x\n# HELP a y\na 1\n",
		"bad type":                "# TYPE a number\na 1\n",
		"negative counter":        "# TYPE a counter\na -1\n",
		"quote escape in HELP":    "# HELP a \\\"x\\\"\na 1\n",
		"invalid UTF-8":           "a{x=\"\xff\"} 1\n",
		"junk after label value":  "a{x=\"1\"y=\"2\"} 1\n",
		"no space before value":   "a{x=\"1\"}1\n",
		"TYPE without type":       "# TYPE a\na 1\n",
		"HELP of bad metric name": "# HELP 9a x\n",
	}
	for name, text := range bad {
		if _, err := parseExposition(text); err == nil {
			t.Errorf("%s: %q accepted", name, text)
		}
	}
	good := "# HELP a A \\\\ b\\nc.\n# TYPE a counter\na{x=\"q\\\"\\\\\\n\",} 1 1700000000000\na 2\n\n# a comment\nb NaN\nc -Inf\n"
	x, err := parseExposition(good)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := x.value("a", "x", "q\"\\\n"); !ok || v != 1 {
		t.Errorf("a{x}: %v %v", v, ok)
	}
	if x.byName["a"].Help != "A \\ b\nc." || x.byName["a"].Type != "counter" {
		t.Errorf("a: %+v", x.byName["a"])
	}
}
