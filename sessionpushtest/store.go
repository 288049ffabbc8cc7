package sessionpushtest

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush"
)

// TestStore checks that a [sessionpush.Store] keeps the contract written on
// the interface, and what the Manager relies on besides: Add, Get, ByUser,
// All, Touch and Remove, "not found" never an error, a replaced record moved
// in the user index, Touch never bringing back a removed record, All
// yielding every record once over many pages while the loop body changes
// the store, and ending with the context's error; Remove reporting a
// removal to exactly one of many concurrent callers; concurrent Adds all
// indexed; times kept to the millisecond at least.
//
// Each subtest calls newStore with its own t and expects an empty store of
// its own: for a shared server, use a fresh key prefix or database on every
// call and clean up in t.Cleanup. TestStore makes about 10,000 store calls
// in all.
//
//	func TestMyStore(t *testing.T) {
//		sessionpushtest.TestStore(t, func(t *testing.T) sessionpush.Store {
//			return mystore.New(...)
//		})
//	}
func TestStore(t *testing.T, newStore func(t *testing.T) sessionpush.Store) {
	for _, tc := range storeTests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if s == nil {
				t.Fatal("newStore returned nil")
			}
			tc.run(t, storeChecker{t: t, s: s, ctx: t.Context()})
		})
	}
}

// t0 has nanoseconds, which a store may round to the millisecond.
var t0 = time.Date(2025, time.March, 14, 15, 9, 26, 535_897_932, time.UTC)

// precision is the least precision a store must keep times with.
const precision = time.Millisecond

var storeTests = []struct {
	name string
	run  func(*testing.T, storeChecker)
}{
	{"NotFoundIsNoError", func(t *testing.T, c storeChecker) {
		if rec, ok, err := c.s.Get(c.ctx, "missing"); ok || err != nil {
			t.Errorf("Get(missing) = %+v, %v, %v; want ok=false and no error", rec, ok, err)
		}
		if recs, err := c.s.ByUser(c.ctx, "nobody"); len(recs) != 0 || err != nil {
			t.Errorf("ByUser(nobody) = %+v, %v; want none and no error", recs, err)
		}
		if removed, err := c.s.Remove(c.ctx, "missing"); removed || err != nil {
			t.Errorf("Remove(missing) = %v, %v; want false and no error", removed, err)
		}
		if found, err := c.s.Touch(c.ctx, "missing", t0); found || err != nil {
			t.Errorf("Touch(missing) = %v, %v; want false and no error", found, err)
		}
		c.wantAll(nil)
	}},

	{"AddGet", func(t *testing.T, c storeChecker) {
		recs := []sessionpush.Record{
			rec("a", "alice", t0, t0.Add(time.Minute)),
			rec("b", "alice", t0.Add(time.Second), t0.Add(2*time.Second)),
			rec("c", "bob", t0, t0),
		}
		for _, r := range recs {
			c.add(r)
		}
		for _, r := range recs {
			c.wantGet(r)
		}
		c.wantAll(recs)
	}},

	{"AddReplaces", func(t *testing.T, c storeChecker) {
		c.add(rec("a", "alice", t0, t0))
		c.add(rec("b", "alice", t0, t0))
		newer := rec("a", "alice", t0.Add(time.Hour), t0.Add(2*time.Hour))
		c.add(newer)
		c.wantGet(newer)
		c.wantByUser("alice", newer, rec("b", "alice", t0, t0))
		c.wantAll([]sessionpush.Record{newer, rec("b", "alice", t0, t0)})
	}},

	{"ReplaceMovesUserIndex", func(t *testing.T, c storeChecker) {
		a, b := rec("a", "alice", t0, t0), rec("b", "alice", t0, t0)
		c.add(a)
		c.add(b)
		moved := rec("a", "bob", t0.Add(time.Minute), t0.Add(time.Minute))
		c.add(moved)
		c.wantGet(moved)
		c.wantByUser("alice", b)
		c.wantByUser("bob", moved)
		back := rec("a", "alice", t0, t0)
		c.add(back)
		c.wantByUser("alice", back, b)
		c.wantByUser("bob")
		c.wantAll([]sessionpush.Record{back, b})
	}},

	{"ByUser", func(t *testing.T, c storeChecker) {
		var alice, bob []sessionpush.Record
		for i := range 5 {
			alice = append(alice, rec(fmt.Sprint("a", i), "alice", t0.Add(time.Duration(i)*time.Second), t0))
			bob = append(bob, rec(fmt.Sprint("b", i), "bob", t0, t0.Add(time.Duration(i)*time.Second)))
		}
		for _, r := range slices.Concat(alice, bob) {
			c.add(r)
		}
		c.wantByUser("alice", alice...)
		c.wantByUser("bob", bob...)
		c.wantByUser("carol")
	}},

	{"Touch", func(t *testing.T, c storeChecker) {
		a, b := rec("a", "alice", t0, t0), rec("b", "alice", t0, t0)
		c.add(a)
		c.add(b)
		later := t0.Add(time.Hour + 123*time.Millisecond)
		if found, err := c.s.Touch(c.ctx, "a", later); !found || err != nil {
			t.Fatalf("Touch(a) = %v, %v; want true", found, err)
		}
		a.LastSeen = later
		c.wantGet(a)
		c.wantGet(b)
		c.wantByUser("alice", a, b)
	}},

	{"TouchOfMissingAddsNothing", func(t *testing.T, c storeChecker) {
		if found, err := c.s.Touch(c.ctx, "never", t0); found || err != nil {
			t.Fatalf("Touch(never added) = %v, %v", found, err)
		}
		c.wantGone("never", "")
		c.add(rec("a", "alice", t0, t0))
		c.remove("a", true)
		if found, err := c.s.Touch(c.ctx, "a", t0.Add(time.Hour)); found || err != nil {
			t.Fatalf("Touch(removed) = %v, %v", found, err)
		}
		c.wantGone("a", "alice")
		c.wantAll(nil)
	}},

	{"Remove", func(t *testing.T, c storeChecker) {
		a, b, x := rec("a", "alice", t0, t0), rec("b", "alice", t0, t0), rec("x", "bob", t0, t0)
		for _, r := range []sessionpush.Record{a, b, x} {
			c.add(r)
		}
		c.remove("a", true)
		c.wantGone("a", "alice")
		c.wantByUser("alice", b)
		c.wantAll([]sessionpush.Record{b, x})
		c.remove("a", false)
		c.remove("b", true)
		c.wantByUser("alice")
		c.wantGet(x)
		c.add(a) // a removed channel can be added again
		c.wantGet(a)
		c.wantByUser("alice", a)
	}},

	{"RemoveExactlyOnce", func(t *testing.T, c storeChecker) {
		const channels, callers = 4, 32
		for i := range channels {
			c.add(rec(fmt.Sprint("c", i), "alice", t0, t0))
		}
		var removed [channels]atomic.Int64
		together(channels*callers, func(i int) {
			id := fmt.Sprint("c", i%channels)
			ok, err := c.s.Remove(c.ctx, id)
			if err != nil {
				t.Errorf("Remove(%s) = %v", id, err)
			}
			if ok {
				removed[i%channels].Add(1)
			}
		})
		for i := range channels {
			if n := removed[i].Load(); n != 1 {
				t.Errorf("channel c%d: %d of %d concurrent Removes reported the removal, want exactly 1", i, n, callers)
			}
		}
		c.wantByUser("alice")
		c.wantAll(nil)
	}},

	{"ConcurrentAddsOfOneUser", func(t *testing.T, c storeChecker) {
		const n = 64
		want := make([]sessionpush.Record, n)
		for i := range n {
			want[i] = rec(fmt.Sprint("c", i), "alice", t0, t0.Add(time.Duration(i)*time.Millisecond))
		}
		together(n, func(i int) {
			if err := c.s.Add(c.ctx, want[i]); err != nil {
				t.Errorf("Add(%s) = %v", want[i].ID, err)
			}
		})
		c.wantByUser("alice", want...)
		c.wantAll(want)
	}},

	{"ConcurrentMovesKeepIndexes", func(t *testing.T, c storeChecker) {
		// Many callers give the same channels to different users, and some
		// remove them: whoever wins, each channel must end up indexed
		// under its owner alone, or nowhere.
		const channels, users = 8, 8
		var userNames []string
		for u := range users {
			userNames = append(userNames, fmt.Sprint("u", u))
		}
		for round := range 4 {
			together(channels*users, func(i int) {
				id := fmt.Sprintf("r%d-c%d", round, i%channels)
				user := userNames[i/channels]
				if round%2 == 1 && i/channels == 0 {
					if _, err := c.s.Remove(c.ctx, id); err != nil {
						t.Errorf("Remove(%s) = %v", id, err)
					}
					return
				}
				if err := c.s.Add(c.ctx, rec(id, user, t0, t0)); err != nil {
					t.Errorf("Add(%s, %s) = %v", id, user, err)
				}
			})
		}
		c.wantConsistent(userNames)
	}},

	{"AllManyPages", func(t *testing.T, c storeChecker) {
		want := c.addMany("p", 2500)
		c.wantAll(want)
	}},

	{"AllWhileRemoving", func(t *testing.T, c storeChecker) {
		// At the first record the loop body removes every other record;
		// it removes each record it is given. Records present throughout
		// must come exactly once, removed ones at most once, and the walk
		// must not fail.
		recs := c.addMany("p", 2500)
		byID := index(recs)
		seen := map[string]int{}
		first := true
		for r, err := range c.s.All(c.ctx) {
			if err != nil {
				t.Fatalf("All failed while the loop removed records: %v", err)
			}
			seen[r.ID]++
			c.wantSame(r, byID[r.ID])
			if first {
				first = false
				for i := 1; i < len(recs); i += 2 {
					if recs[i].ID != r.ID {
						c.remove(recs[i].ID, true)
					}
				}
			}
			if _, err := c.s.Remove(c.ctx, r.ID); err != nil {
				t.Fatalf("Remove(%s) inside All = %v", r.ID, err)
			}
		}
		for i, r := range recs {
			switch n := seen[r.ID]; {
			case n > 1:
				t.Errorf("All yielded %s %d times", r.ID, n)
			case n == 0 && i%2 == 0:
				t.Errorf("All left out %s, which was never removed before its turn", r.ID)
			}
		}
		c.wantAll(nil)
		c.wantByUser("u0")
	}},

	{"AllWhileAdding", func(t *testing.T, c storeChecker) {
		old := c.addMany("old", 1500)
		var added []sessionpush.Record
		seen := map[string]int{}
		for r, err := range c.s.All(c.ctx) {
			if err != nil {
				t.Fatalf("All failed while the loop added records: %v", err)
			}
			seen[r.ID]++
			if added == nil {
				added = c.addMany("new", 500)
			}
		}
		for _, r := range old {
			if n := seen[r.ID]; n != 1 {
				t.Errorf("All yielded %s %d times, want once", r.ID, n)
			}
		}
		for _, r := range added {
			if n := seen[r.ID]; n > 1 {
				t.Errorf("All yielded %s (added during the walk) %d times", r.ID, n)
			}
		}
		if len(seen) > len(old)+len(added) {
			t.Errorf("All yielded %d distinct IDs, only %d exist", len(seen), len(old)+len(added))
		}
	}},

	{"AllStopsWhenTheLoopBreaks", func(t *testing.T, c storeChecker) {
		c.addMany("p", 2500)
		n := 0
		for _, err := range c.s.All(c.ctx) {
			if err != nil {
				t.Fatal(err)
			}
			if n++; n == 3 {
				break // a store that yields again makes range panic
			}
		}
		if _, ok, err := c.s.Get(c.ctx, "p-0"); !ok || err != nil {
			t.Fatalf("Get after a broken-off All = %v, %v", ok, err)
		}
	}},

	{"AllEndsWithContextError", func(t *testing.T, c storeChecker) {
		c.addMany("p", 3)
		ctx, cancel := context.WithCancel(c.ctx)
		cancel()
		recs, err := c.collect(c.s.All(ctx))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("All on a cancelled context yielded %d records and error %v, want an error wrapping context.Canceled", len(recs), err)
		}
	}},

	{"AllEndsWhenCancelledMidWalk", func(t *testing.T, c storeChecker) {
		c.addMany("p", 2500)
		ctx, cancel := context.WithCancel(c.ctx)
		defer cancel()
		var (
			n    int
			last error
		)
		for _, err := range c.s.All(ctx) {
			if last != nil {
				t.Fatalf("All yielded again after the error %v", last)
			}
			if err != nil {
				last = err
				continue
			}
			if n++; n == 10 {
				cancel()
			}
		}
		if !errors.Is(last, context.Canceled) {
			t.Fatalf("All cancelled after 10 of 2500 records yielded %d records and ended with %v, want an error wrapping context.Canceled", n, last)
		}
	}},

	{"TimesRoundTrip", func(t *testing.T, c storeChecker) {
		zone := time.FixedZone("UTC-7", -7*3600)
		recs := []sessionpush.Record{
			rec("ns", "u", t0, t0.Add(999_999*time.Nanosecond)),
			rec("zone", "u", t0.In(zone), t0.Add(time.Hour).In(zone)),
			rec("epoch", "u", time.Unix(0, 0), time.Unix(0, 1_500_000)),
			rec("before-epoch", "u", time.Unix(-1, 999_500_000), time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)),
			rec("far", "u", time.Date(2199, 12, 31, 23, 59, 59, 999_000_000, time.UTC), t0),
			rec("zero", "u", time.Time{}, time.Time{}),
			rec("now", "u", time.Now(), time.Now()),
		}
		for _, r := range recs {
			c.add(r)
		}
		for _, r := range recs {
			c.wantGet(r)
		}
		c.wantByUser("u", recs...)
		c.wantAll(recs)
		touched := t0.Add(90*time.Minute + 7*time.Millisecond + 3*time.Microsecond)
		if found, err := c.s.Touch(c.ctx, "ns", touched); !found || err != nil {
			t.Fatalf("Touch(ns) = %v, %v", found, err)
		}
		recs[0].LastSeen = touched
		c.wantGet(recs[0])
	}},

	{"OddIDsAndUsers", func(t *testing.T, c storeChecker) {
		recs := []sessionpush.Record{
			rec("a:b", "user:bob", t0, t0),
			rec("ch:1", "{tag}", t0, t0),
			rec("{x}", "", t0, t0),
			rec("ü ñ/*?", "a b", t0, t0),
			rec("user:bob", "ch:1", t0, t0),
		}
		for _, r := range recs {
			c.add(r)
		}
		for _, r := range recs {
			c.wantGet(r)
			c.wantByUser(r.User, r)
		}
		c.wantAll(recs)
		for _, r := range recs {
			c.remove(r.ID, true)
			c.wantGone(r.ID, r.User)
		}
		c.wantAll(nil)
	}},
}

// storeChecker holds a store under test and the checks on it.
type storeChecker struct {
	t   *testing.T
	s   sessionpush.Store
	ctx context.Context
}

func rec(id, user string, opened, lastSeen time.Time) sessionpush.Record {
	return sessionpush.Record{ID: id, User: user, Opened: opened, LastSeen: lastSeen}
}

func index(recs []sessionpush.Record) map[string]sessionpush.Record {
	m := make(map[string]sessionpush.Record, len(recs))
	for _, r := range recs {
		m[r.ID] = r
	}
	return m
}

// together runs f(0) ... f(n-1) in n goroutines released at once and waits
// for them.
func together(n int, f func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			f(i)
		})
	}
	close(start)
	wg.Wait()
}

func (c storeChecker) add(r sessionpush.Record) {
	c.t.Helper()
	if err := c.s.Add(c.ctx, r); err != nil {
		c.t.Fatalf("Add(%+v) = %v", r, err)
	}
}

// addMany adds n records "<prefix>-<i>" for ten users "u0" ... "u9", 16 at
// a time, and returns them.
func (c storeChecker) addMany(prefix string, n int) []sessionpush.Record {
	c.t.Helper()
	recs := make([]sessionpush.Record, n)
	for i := range recs {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		recs[i] = rec(fmt.Sprintf("%s-%d", prefix, i), fmt.Sprint("u", i%10), at, at.Add(time.Second))
	}
	var (
		next atomic.Int64
		fail atomic.Value
	)
	together(16, func(int) {
		for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
			if err := c.s.Add(c.ctx, recs[i]); err != nil {
				fail.CompareAndSwap(nil, fmt.Errorf("Add(%s) = %w", recs[i].ID, err))
				return
			}
		}
	})
	if err, _ := fail.Load().(error); err != nil {
		c.t.Fatal(err)
	}
	return recs
}

func (c storeChecker) remove(id string, want bool) {
	c.t.Helper()
	removed, err := c.s.Remove(c.ctx, id)
	if err != nil || removed != want {
		c.t.Fatalf("Remove(%s) = %v, %v; want %v", id, removed, err, want)
	}
}

// wantSame checks that got is want, times to the millisecond.
func (c storeChecker) wantSame(got, want sessionpush.Record) {
	c.t.Helper()
	same := func(a, b time.Time) bool {
		return a.IsZero() == b.IsZero() && a.Sub(b).Abs() < precision
	}
	if got.ID != want.ID || got.User != want.User || !same(got.Opened, want.Opened) || !same(got.LastSeen, want.LastSeen) {
		c.t.Errorf("got record %+v, want %+v (times to the %v)", got, want, precision)
	}
}

func (c storeChecker) wantGet(want sessionpush.Record) {
	c.t.Helper()
	got, ok, err := c.s.Get(c.ctx, want.ID)
	if err != nil || !ok {
		c.t.Errorf("Get(%s) = %v, %v; want the record", want.ID, ok, err)
		return
	}
	c.wantSame(got, want)
}

// wantGone checks that channel id is neither recorded nor indexed under
// user.
func (c storeChecker) wantGone(id, user string) {
	c.t.Helper()
	if got, ok, err := c.s.Get(c.ctx, id); ok || err != nil {
		c.t.Errorf("Get(%s) = %+v, %v, %v; want ok=false and no error", id, got, ok, err)
	}
	recs, err := c.s.ByUser(c.ctx, user)
	if err != nil {
		c.t.Errorf("ByUser(%q) = %v", user, err)
	}
	for _, r := range recs {
		if r.ID == id {
			c.t.Errorf("ByUser(%q) still has %s: %+v", user, id, r)
		}
	}
}

// wantRecords checks that got holds each of want once, and nothing else.
func (c storeChecker) wantRecords(what string, got, want []sessionpush.Record) {
	c.t.Helper()
	wantBy := index(want)
	seen := map[string]bool{}
	for _, r := range got {
		if seen[r.ID] {
			c.t.Errorf("%s: %s more than once", what, r.ID)
			continue
		}
		seen[r.ID] = true
		w, ok := wantBy[r.ID]
		if !ok {
			c.t.Errorf("%s: unexpected %+v", what, r)
			continue
		}
		c.wantSame(r, w)
	}
	if len(seen) != len(wantBy) {
		var missing []string
		for id := range wantBy {
			if !seen[id] {
				missing = append(missing, id)
			}
		}
		slices.Sort(missing)
		if len(missing) > 10 {
			missing = append(missing[:10], "…")
		}
		c.t.Errorf("%s: %d records, want %d; missing %v", what, len(seen), len(wantBy), missing)
	}
}

func (c storeChecker) wantByUser(user string, want ...sessionpush.Record) {
	c.t.Helper()
	got, err := c.s.ByUser(c.ctx, user)
	if err != nil {
		c.t.Errorf("ByUser(%q) = %v", user, err)
		return
	}
	c.wantRecords(fmt.Sprintf("ByUser(%q)", user), got, want)
}

func (c storeChecker) wantAll(want []sessionpush.Record) {
	c.t.Helper()
	got, err := c.collect(c.s.All(c.ctx))
	if err != nil {
		c.t.Errorf("All = %v", err)
		return
	}
	c.wantRecords("All", got, want)
}

// collect runs seq to its end and returns the records and the error that
// ended it; a value yielded after an error fails the test.
func (c storeChecker) collect(seq iter.Seq2[sessionpush.Record, error]) ([]sessionpush.Record, error) {
	c.t.Helper()
	var (
		recs  []sessionpush.Record
		ended error
	)
	for r, err := range seq {
		switch {
		case ended != nil:
			c.t.Errorf("All yielded %+v, %v after the error %v", r, err, ended)
		case err != nil:
			ended = err
		default:
			recs = append(recs, r)
		}
	}
	return recs, ended
}

// wantConsistent checks that Get, ByUser of each of users and All agree:
// every record is indexed under its own user alone.
func (c storeChecker) wantConsistent(users []string) {
	c.t.Helper()
	all, err := c.collect(c.s.All(c.ctx))
	if err != nil {
		c.t.Fatalf("All = %v", err)
	}
	owner := map[string]string{}
	for _, r := range all {
		got, ok, err := c.s.Get(c.ctx, r.ID)
		if err != nil || !ok || got.User != r.User {
			c.t.Errorf("All yielded %+v but Get says %+v, %v, %v", r, got, ok, err)
		}
		owner[r.ID] = r.User
	}
	indexed := map[string]string{}
	for _, u := range users {
		recs, err := c.s.ByUser(c.ctx, u)
		if err != nil {
			c.t.Fatalf("ByUser(%q) = %v", u, err)
		}
		for _, r := range recs {
			if prev, dup := indexed[r.ID]; dup {
				c.t.Errorf("%s is indexed under %q and %q", r.ID, prev, u)
			}
			indexed[r.ID] = u
			if r.User != u {
				c.t.Errorf("ByUser(%q) yielded %+v", u, r)
			}
		}
	}
	if !maps.Equal(owner, indexed) {
		c.t.Errorf("owners by All %v differ from owners by ByUser %v", owner, indexed)
	}
}
