package sessionpush_test

import (
	"testing"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

func TestMemoryStoreConformance(t *testing.T) {
	sessionpushtest.TestStore(t, func(*testing.T) sessionpush.Store {
		return sessionpush.NewMemoryStore()
	})
}
