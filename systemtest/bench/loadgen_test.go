package bench

import (
	"errors"
	"testing"
)

func TestParseAnswer(t *testing.T) {
	full := "HTTP/1.1 201 Created\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
	closing := "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
	for _, tc := range []struct {
		in      string
		used    int // 0: incomplete
		status  int
		closing bool
	}{
		{full, len(full), 201, false},
		{full + "HTTP/1.1 202", len(full), 201, false}, // one answer, then the start of another
		{full[:len(full)-1], 0, 0, false},              // body incomplete
		{full[:20], 0, 0, false},                       // headers incomplete
		{closing, len(closing), 202, true},
	} {
		used, status, c, err := parseAnswer([]byte(tc.in))
		if err != nil || used != tc.used || status != tc.status || c != tc.closing {
			t.Errorf("%q: used %d, status %d, closing %v, err %v; want %d, %d, %v", tc.in, used, status, c, err, tc.used, tc.status, tc.closing)
		}
	}
	for _, in := range []string{
		"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
	} {
		if _, _, _, err := parseAnswer([]byte(in)); !errors.Is(err, errBadAnswer) {
			t.Errorf("%q: err %v, want errBadAnswer", in, err)
		}
	}
}
