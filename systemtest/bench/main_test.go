package bench

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// TestMain lets this test binary serve as the listener farm (systemtest/farm).
func TestMain(m *testing.M) {
	farm.Main()
	goleak.VerifyTestMain(m)
}
