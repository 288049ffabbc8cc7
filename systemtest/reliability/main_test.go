package reliability

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// TestMain turns the process into a listener farm when the load test starts
// one (farm.Main returns at once otherwise), and fails the run if any
// goroutine outlives the tests.
func TestMain(m *testing.M) {
	farm.Main()
	goleak.VerifyTestMain(m)
}
