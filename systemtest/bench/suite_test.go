package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
)

// suiteConfig bounds the suite: the full run or the smoke test.
type suiteConfig struct {
	full      bool
	listeners int           // N of figures 3 to 5
	runs      int           // measured runs (rounds) per figure
	pubDur    time.Duration // per load generator, per concurrency, per run
	pubConc   []int
	publishP  int     // publishing goroutines of figure 3
	pace      float64 // messages per second of figure 3's paced variant
}

func loadSuiteConfig(t *testing.T) suiteConfig {
	c := suiteConfig{listeners: 100, runs: 1, pubDur: 100 * time.Millisecond, pubConc: []int{1, 16, 64}, publishP: 8, pace: 5000}
	switch os.Getenv("SESSIONPUSH_BENCH") {
	case "":
	case "full":
		c.full, c.listeners, c.runs, c.pubDur = true, 10000, 5, time.Second
	default:
		t.Fatalf("SESSIONPUSH_BENCH=%q: want \"full\" or nothing", os.Getenv("SESSIONPUSH_BENCH"))
	}
	c.listeners = max(1, envInt(t, "SESSIONPUSH_BENCH_LISTENERS", c.listeners))
	c.runs = max(1, envInt(t, "SESSIONPUSH_BENCH_RUNS", c.runs))
	return c
}

// row is one line of the suite's table: a subject measured against a
// baseline in the same run, once per run.
type row struct {
	fig, measure  string
	subject, base string
	unit          string
	subj, baseV   []float64 // per run; baseV nil: no baseline
	target        string
	// holds judges the medians (s, b) and the median of the per-run
	// ratios r; nil: no target.
	holds func(s, b, r float64) bool
	note  string
}

// rows collects the suite's rows; subtests add to it.
type rows struct {
	mu sync.Mutex
	rs []row
}

func (r *rows) add(x row) {
	r.mu.Lock()
	r.rs = append(r.rs, x)
	r.mu.Unlock()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fnum(x float64) string {
	a := math.Abs(x)
	switch {
	case math.IsNaN(x) || math.IsInf(x, 0):
		return "n/a"
	case a >= 100000:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strconv.FormatFloat(x, 'g', 3, 64)
}

func spread(v []float64, unit string) string {
	if len(v) == 0 {
		return "–"
	}
	if len(v) == 1 {
		return fnum(v[0]) + unit
	}
	return fmt.Sprintf("%s%s [%s–%s]", fnum(median(v)), unit, fnum(slices.Min(v)), fnum(slices.Max(v)))
}

func (x row) ratios() []float64 {
	if x.baseV == nil {
		return nil
	}
	var r []float64
	for i := range min(len(x.subj), len(x.baseV)) {
		r = append(r, x.subj[i]/x.baseV[i])
	}
	return r
}

// suiteTable renders the rows as a markdown table.
func suiteTable(cfg suiteConfig, rs []row, wall time.Duration, loadBefore string) string {
	var b strings.Builder
	mode := "full"
	if !cfg.full {
		mode = "SMOKE (small N, one run: the figures mean nothing; targets not judged)"
	}
	fmt.Fprintf(&b, "sessionpush bench suite, %s: N = %d listeners, %d run(s) per figure, %d CPUs, %s, %s, commit %s, wall %v\n\n",
		mode, cfg.listeners, cfg.runs, runtime.NumCPU(), runtime.Version(), memTotal(), commit(), wall.Round(time.Second))
	fmt.Fprintf(&b, "Load average (1, 5, 15 min) before: %s; after: %s. Above ~1 other work shared the machine: the figures are noisier.\n\n", loadBefore, loadAvg())
	b.WriteString("| fig | measure | subject | baseline | unit | subject med [min–max] | baseline med [min–max] | ratio med [min–max] | target | holds |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range rs {
		base, ratio := "–", "–"
		if x.baseV != nil {
			base, ratio = spread(x.baseV, ""), spread(x.ratios(), "×")
		}
		holds := "–"
		if x.holds != nil {
			switch {
			case !cfg.full:
				holds = "(smoke)"
			case x.holds(median(x.subj), median(x.baseV), median(x.ratios())):
				holds = "yes"
			default:
				holds = "**NO**"
			}
		}
		measure := x.measure
		if x.note != "" {
			measure += " (" + x.note + ")"
		}
		baseName := x.base
		if baseName == "" {
			baseName = "–"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			x.fig, measure, x.subject, baseName, x.unit, spread(x.subj, ""), base, ratio, orDash(x.target), holds)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.Atoi(f[1])
			return fmt.Sprintf("%d MiB RAM", kb/1024)
		}
	}
	return "memory unknown"
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		c += "+dirty"
	}
	return c
}

// procCPU returns the CPU time of a single-threaded process (the nginx
// worker): the scheduler's run time in nanoseconds from
// /proc/<pid>/schedstat, or, where the kernel lacks it, utime+stime from
// /proc/<pid>/stat, in ticks of 10 ms.
func procCPU(pid int) (time.Duration, error) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid)); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 1 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return time.Duration(ns), nil
			}
		}
	}
	return servers.ProcCPU(pid)
}

// selfCPU returns this process's user+system CPU time (getrusage).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestSuite is the benchmark suite; see the package documentation.
func TestSuite(t *testing.T) {
	cfg := loadSuiteConfig(t)
	start := time.Now()
	load := loadAvg()
	var all rows
	t.Run("middleware", func(t *testing.T) { middlewareFigures(t, cfg, &all) })
	t.Run("publish", func(t *testing.T) { publishFigures(t, cfg, &all) })
	t.Run("fanout", func(t *testing.T) { fanoutFigures(t, cfg, &all) })
	t.Run("redishub", func(t *testing.T) { redishubFigures(t, cfg, &all) })
	all.mu.Lock()
	defer all.mu.Unlock()
	slices.SortStableFunc(all.rs, func(a, b row) int { return strings.Compare(a.fig[:1], b.fig[:1]) })
	out := suiteTable(cfg, all.rs, time.Since(start), load)
	t.Logf("\n%s", out)
	if path := os.Getenv("SESSIONPUSH_BENCH_OUT"); path != "" {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Error(err)
		}
	}
}
