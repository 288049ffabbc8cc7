package sessionpushtest_test

import (
	"context"
	"errors"
	"iter"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

// flawEnv names the flaw that TestFlawedStore gives its store when the
// test binary runs itself.
const flawEnv = "SESSIONPUSHTEST_STORE_FLAW"

// TestStoreCatchesFlaws checks the checker: TestStore passes a sound store
// and fails stores with one flaw each, in the subtest meant to catch it. A
// failing TestStore cannot run inside this test without failing it, so the
// test binary runs TestFlawedStore in a child process per flaw.
func TestStoreCatchesFlaws(t *testing.T) {
	for flaw, caughtBy := range map[string]string{
		"":                        "", // the MemoryStore as it is: passes
		"not-found-error":         "NotFoundIsNoError",
		"remove-always-true":      "RemoveExactlyOnce",
		"touch-resurrects":        "TouchOfMissingAddsNothing",
		"user-index-not-moved":    "ReplaceMovesUserIndex",
		"all-yields-twice":        "AllManyPages",
		"all-first-page-only":     "AllManyPages",
		"all-ignores-context":     "AllEndsWhenCancelledMidWalk",
		"all-goes-on-after-error": "AllEndsWhenCancelledMidWalk",
		"times-to-the-second":     "TimesRoundTrip",
	} {
		t.Run("flaw="+flaw, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestFlawedStore$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), flawEnv+"="+flaw)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			switch {
			case caughtBy == "" && err != nil:
				t.Fatalf("TestStore failed a sound MemoryStore: %v\n%s", err, out)
			case caughtBy == "":
				if !strings.Contains(string(out), "--- PASS: TestFlawedStore") {
					t.Fatalf("TestFlawedStore did not run:\n%s", out)
				}
			case !errors.As(err, &exit):
				t.Fatalf("TestStore passed a store with the flaw %q (%v):\n%s", flaw, err, out)
			case !strings.Contains(string(out), "--- FAIL: TestFlawedStore/"+caughtBy+" "):
				t.Fatalf("TestStore failed the flaw %q, but not in %s:\n%s", flaw, caughtBy, out)
			}
		})
	}
}

// TestFlawedStore runs TestStore on a MemoryStore with the flaw named by
// the environment variable flawEnv; it is a child of TestStoreCatchesFlaws.
func TestFlawedStore(t *testing.T) {
	flaw, ok := os.LookupEnv(flawEnv)
	if !ok {
		t.Skip("run by TestStoreCatchesFlaws in a child process")
	}
	sessionpushtest.TestStore(t, func(*testing.T) sessionpush.Store {
		return &flawedStore{MemoryStore: sessionpush.NewMemoryStore(), flaw: flaw, moved: map[string][]string{}}
	})
}

// flawedStore is a MemoryStore with one flaw.
type flawedStore struct {
	*sessionpush.MemoryStore
	flaw string

	mu    sync.Mutex
	moved map[string][]string // user → channels once theirs, for user-index-not-moved
}

func (s *flawedStore) Add(ctx context.Context, rec sessionpush.Record) error {
	switch s.flaw {
	case "times-to-the-second":
		rec.Opened, rec.LastSeen = rec.Opened.Truncate(time.Second), rec.LastSeen.Truncate(time.Second)
	case "user-index-not-moved":
		if old, ok, _ := s.MemoryStore.Get(ctx, rec.ID); ok && old.User != rec.User {
			s.mu.Lock()
			s.moved[old.User] = append(s.moved[old.User], rec.ID)
			s.mu.Unlock()
		}
	}
	return s.MemoryStore.Add(ctx, rec)
}

func (s *flawedStore) Get(ctx context.Context, id string) (sessionpush.Record, bool, error) {
	rec, ok, err := s.MemoryStore.Get(ctx, id)
	if s.flaw == "not-found-error" && !ok {
		return rec, ok, errors.New("not found")
	}
	return rec, ok, err
}

func (s *flawedStore) ByUser(ctx context.Context, user string) ([]sessionpush.Record, error) {
	recs, err := s.MemoryStore.ByUser(ctx, user)
	if s.flaw == "user-index-not-moved" {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, id := range s.moved[user] {
			if rec, ok, _ := s.MemoryStore.Get(ctx, id); ok && rec.User != user {
				recs = append(recs, rec)
			}
		}
	}
	return recs, err
}

func (s *flawedStore) All(ctx context.Context) iter.Seq2[sessionpush.Record, error] {
	all := s.MemoryStore.All(ctx)
	switch s.flaw {
	case "all-yields-twice":
		return func(yield func(sessionpush.Record, error) bool) {
			for rec, err := range all {
				if !yield(rec, err) || err == nil && !yield(rec, nil) {
					return
				}
			}
		}
	case "all-first-page-only":
		return func(yield func(sessionpush.Record, error) bool) {
			n := 0
			for rec, err := range all {
				if n++; n > 1000 || !yield(rec, err) {
					return
				}
			}
		}
	case "all-ignores-context":
		return s.MemoryStore.All(context.WithoutCancel(ctx))
	case "all-goes-on-after-error":
		return func(yield func(sessionpush.Record, error) bool) {
			for rec, err := range s.MemoryStore.All(context.WithoutCancel(ctx)) {
				if ctx.Err() != nil && !yield(sessionpush.Record{}, ctx.Err()) {
					return
				}
				if !yield(rec, err) {
					return
				}
			}
		}
	}
	return all
}

func (s *flawedStore) Touch(ctx context.Context, id string, t time.Time) (bool, error) {
	if _, ok, _ := s.MemoryStore.Get(ctx, id); !ok && s.flaw == "touch-resurrects" {
		return false, s.MemoryStore.Add(ctx, sessionpush.Record{ID: id, LastSeen: t})
	}
	return s.MemoryStore.Touch(ctx, id, t)
}

func (s *flawedStore) Remove(ctx context.Context, id string) (bool, error) {
	switch s.flaw {
	case "remove-always-true":
		_, err := s.MemoryStore.Remove(ctx, id)
		return true, err
	}
	return s.MemoryStore.Remove(ctx, id)
}
