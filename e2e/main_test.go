package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sessionpush/sessionpush/internal/servers"
)

// chromium is Debian's Chromium, which .ci/run installs.
const chromium = "/usr/bin/chromium"

// raceEnabled is set by race_test.go when the tests run with -race: the
// example is then built with -race too, and a race it reports fails the test.
var raceEnabled bool

var (
	// exampleBin is the example program, built once by TestMain (empty
	// with -short).
	exampleBin string
	// browser is the shared Chromium; each test opens its own browser
	// contexts (cookie jars) in it. Nil when browserErr says why not.
	browser    context.Context
	browserErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if testing.Short() {
		return m.Run() // every test skips
	}
	// The example first: the tests of clients outside the browser
	// (eventsource_test.go) need it without Chromium.
	dir, err := os.MkdirTemp("", "sessionpush-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	exampleBin = filepath.Join(dir, "example")
	if err := buildExample(exampleBin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if _, err := os.Stat(chromium); err != nil {
		browserErr = fmt.Errorf("%s is missing: install Debian's chromium (apt-get install chromium)", chromium)
		return m.Run()
	}
	os.RemoveAll("screenshots") // this run's only, none of an earlier failure

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		append(chromedp.DefaultExecAllocatorOptions[:], // headless, no background networking or throttling, ...
			chromedp.ExecPath(chromium),
			chromedp.NoSandbox, // as root
			chromedp.DisableGPU,
			chromedp.Flag("disable-quic", true),
			chromedp.Flag("disable-component-update", true),
			// The HTTPS pass serves a self-signed certificate; no
			// other test uses TLS.
			chromedp.Flag("ignore-certificate-errors", true),
			chromedp.WindowSize(900, 700),
			// and a fresh --user-data-dir, which chromedp makes and removes
		)...)
	defer cancelAlloc() // waits for Chromium to exit
	b, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	hung := time.AfterFunc(30*time.Second, cancelBrowser) // a start that hangs fails
	err = chromedp.Do(b)                                  // starts Chromium
	if !hung.Stop() {
		err = fmt.Errorf("no answer in 30 s (%v)", err)
	}
	if err != nil {
		browserErr = fmt.Errorf("starting %s: %w", chromium, err)
	} else {
		browser = b
	}
	return m.Run()
}

// buildExample builds ../example into bin, with -race when the tests have it.
func buildExample(bin string) error {
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./example")...) // go test puts its go first in PATH
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %q: %v\n%s", args, err, out)
	}
	return nil
}

// needBrowser skips the test when Chromium is missing or did not start, or
// fails it when the environment requires every server.
func needBrowser(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the browser tests are skipped")
	}
	if browser == nil {
		if os.Getenv(servers.RequireEnv) == "1" {
			t.Fatalf("%v (%s=1: the browser tests may not skip)", browserErr, servers.RequireEnv)
		}
		t.Skipf("%v; the browser tests are skipped (set %s=1 to fail instead)", browserErr, servers.RequireEnv)
	}
}
