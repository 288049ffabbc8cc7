package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/internal/servers"
)

// programEnv makes this test binary the example program itself (run with
// the arguments in the variable, separated by spaces), so that a test can
// measure its process.
const programEnv = "SESSIONPUSH_EXAMPLE_PROGRAM"

// TestRedTeamMemory is the memory attack of a signed-in user against the
// example on the embedded relay, measured on the program's own process:
// 1,000 users sign in and open their channels, then a user who is not the
// administrator tries ten broadcasts of 64 KiB, and the administrator sends
// ten broadcasts of the largest body the example takes. The program's
// resident memory must grow by less than twice the relay's memory budget
// (hub.Options.MaxBufferedBytes, 64 MiB). It is a measurement, run on
// demand, without the race detector (whose shadow memory would swamp it):
//
//	SESSIONPUSH_LONG=1 go test ./example -run TestRedTeamMemory -v
func TestRedTeamMemory(t *testing.T) {
	if args := os.Getenv(programEnv); args != "" {
		if err := run(context.Background(), strings.Fields(args), os.Stdout); err != nil {
			t.Fatal(err)
		}
		return
	}
	if os.Getenv("SESSIONPUSH_LONG") == "" || raceEnabled {
		t.Skip("a measurement, without -race: SESSIONPUSH_LONG=1 go test ./example -run TestRedTeamMemory -v")
	}
	const budget = 64 << 20
	cmd := exec.Command(os.Args[0], "-test.run=^TestRedTeamMemory$")
	cmd.Env = append(os.Environ(), programEnv+"=-addr 127.0.0.1:0 -admin admin")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	base := make(chan string, 1)
	go func() {
		for sc := bufio.NewScanner(out); sc.Scan(); {
			if _, u, ok := strings.Cut(sc.Text(), "msg=listening url="); ok {
				base <- u
			}
		}
	}()
	var url string
	select {
	case url = <-base:
	case <-time.After(30 * time.Second):
		t.Fatal("the program did not start listening")
	}

	for i := range 1000 {
		b := newBrowser(t, url)
		b.mustLogin(fmt.Sprintf("user%d", i))
		b.subscribe()
	}
	before := processRSS(t, cmd.Process.Pid)

	attacker := newBrowser(t, url)
	attacker.mustLogin("mallory")
	big := `"` + strings.Repeat("x", 64<<10-2) + `"`
	refused := 0
	for range 10 {
		if resp, _ := attacker.postJSON("/broadcast", big); resp.StatusCode == http.StatusForbidden {
			refused++
		}
	}
	admin := newBrowser(t, url)
	admin.mustLogin("admin")
	largest := `"` + strings.Repeat("x", maxBody-2) + `"`
	sent := 0
	for range 10 {
		resp, body := admin.postJSON("/broadcast", largest)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the administrator's broadcast: %s %s", resp.Status, body)
		}
		sent++
	}
	after := processRSS(t, cmd.Process.Pid)
	t.Logf("RESULT 1,000 sessions; mallory's ten 64 KiB broadcasts: %d refused (403); admin's ten %d-byte broadcasts: %d sent; RSS %d MiB before, %d MiB after: growth %.2f× the relay's 64 MiB budget",
		refused, maxBody, sent, before>>20, after>>20, float64(after-before)/budget)
	if refused != 10 {
		t.Errorf("%d of mallory's broadcasts refused, want all 10", refused)
	}
	if after-before > 2*budget {
		t.Errorf("RSS grew %d MiB, more than twice the budget", (after-before)>>20)
	}
}

// processRSS returns the resident set size of process pid.
func processRSS(t *testing.T, pid int) int64 {
	t.Helper()
	kb, err := servers.ProcStatus(strconv.Itoa(pid), "VmRSS")
	if err != nil {
		t.Skipf("no resident set size: %v", err)
	}
	return kb << 10
}
