package nchan

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines outlive the tests: the Client starts
// none of its own, and the tests stop every server and listener they start.
// Idle keep-alive connections of http.DefaultTransport (used by the tests'
// raw requests) are closed first; their goroutines are net/http's.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
