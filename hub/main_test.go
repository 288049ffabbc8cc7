package hub

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine outlives the tests: listeners,
// hijacked streams and their readers all end with their channel, their
// connection or Shutdown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
