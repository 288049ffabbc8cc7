package sessionpush_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sessionpush/sessionpush"
)

func TestClientHandler(t *testing.T) {
	srv := httptest.NewServer(sessionpush.ClientHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/sessionpush.js")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" ||
		etag == "" || !strings.Contains(body, "SessionPush") {
		t.Fatalf("GET: %d %q etag %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), etag, len(body))
	}
	req, _ := http.NewRequest("GET", srv.URL+"/sessionpush.js", nil)
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if readAll(t, resp); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("revalidation: %d, want 304", resp.StatusCode)
	}
}
