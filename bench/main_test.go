package bench

import (
	"os"
	"testing"

	"github.com/sessionpush/sessionpush/internal/farm"
)

// TestMain lets this test binary serve as the listener farm (internal/farm).
func TestMain(m *testing.M) {
	farm.Main()
	os.Exit(m.Run())
}
