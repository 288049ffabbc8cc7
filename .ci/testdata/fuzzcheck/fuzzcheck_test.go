// Package fuzzcheck holds fuzz targets with known outcomes, for the test of
// the CI fuzz script (.ci/fuzz-selftest): it must fail on each finding and
// pass on a target that finds nothing.
package fuzzcheck

import "testing"

// FuzzPanics panics on any input longer than its seed: the fuzzer's first
// insertion finds it.
func FuzzPanics(f *testing.F) {
	f.Add([]byte("seed"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4 {
			panic("fuzzcheck: input longer than the seed")
		}
	})
}

// FuzzFails reports a test failure, without a panic, on the same inputs.
func FuzzFails(f *testing.F) {
	f.Add([]byte("seed"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4 {
			t.Errorf("input of %d bytes", len(b))
		}
	})
}

// FuzzFine finds nothing.
func FuzzFine(f *testing.F) {
	f.Add([]byte("seed"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = len(b)
	})
}
