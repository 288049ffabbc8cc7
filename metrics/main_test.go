package metrics_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started (a test
// server, a listener, the embedded relay's streams) outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
