package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// TestMain fails the package's tests when a goroutine outlives them. A
// listener farm (TestNginxListenersAtScale) is this binary run again:
// farm.Main turns that process into the farm and never returns.
func TestMain(m *testing.M) {
	farm.Main()
	goleak.VerifyTestMain(m)
}
