package main

import (
	"os"
	"os/exec"
	"testing"
)

// TestClientUnderNode runs the browser client's tests (client_test.mjs) under
// Node.js: the client against fakes, and against this example over
// long-poll.
func TestClientUnderNode(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("SESSIONPUSH_REQUIRE_SERVERS") == "1" {
			t.Fatal("node not found; it runs the JS client's tests")
		}
		t.Skip("node not found: the JS client's tests are skipped")
	}
	if testing.Short() {
		t.Skip("-short: the JS client's tests are skipped")
	}
	out, err := exec.Command(node, "--check", "../client.js").CombinedOutput()
	if err != nil {
		t.Fatalf("node --check ../client.js: %v\n%s", err, out)
	}
	out, err = exec.Command(node, "--test", "client_test.mjs").CombinedOutput()
	if err != nil {
		t.Fatalf("node --test client_test.mjs: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
