package nchan

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sessionpush/sessionpush/relay"
)

// BenchmarkPublish publishes a 100-byte JSON message to open channels of a
// real Nchan (one worker, memory store), sequentially and from 16 and 64
// goroutines (goroutine i publishes to channel i; one channel would take more
// than 32767 messages a second, where Nchan's 16-bit message tag wraps),
// through:
//
//   - client: a Client with its defaults (a GET check once per ExistsTTL);
//   - client-check: a Client that checks with a GET before every publish
//     (ExistsTTL < 0), the cost of the naive way to refuse unopened channels;
//   - raw: net/http POSTs of the same bodies with the same Transport
//     settings, reading and closing each answer: the floor.
//
// Run: go test -run '^$' -bench BenchmarkPublish -benchtime 3s ./nchan/
func BenchmarkPublish(b *testing.B) {
	n := startNchan(b, "")
	body := bytes.Repeat([]byte("x"), 100)
	copy(body, `{"type":"note","text":"`)
	body[len(body)-2], body[len(body)-1] = '"', '}'
	const maxConc = 64
	channels := make([]string, maxConc)
	opener := newClient(b, n, "/pub/{channel}", Options{})
	for i := range channels {
		channels[i] = fmt.Sprintf("bench-%d", i)
		if _, err := opener.Open(context.Background(), channels[i]); err != nil {
			b.Fatal(err)
		}
	}
	msg := relay.Message{Body: body, ContentType: "application/json"}

	variants := []struct {
		name string
		op   func() func(channel string) error // a publish function per sub-benchmark
	}{
		{"client", func() func(string) error {
			c := newClient(b, n, "/pub/{channel}", Options{})
			return func(channel string) error { _, err := c.Publish(context.Background(), channel, msg); return err }
		}},
		{"client-check", func() func(string) error {
			c := newClient(b, n, "/pub/{channel}", Options{ExistsTTL: -1})
			return func(channel string) error { _, err := c.Publish(context.Background(), channel, msg); return err }
		}},
		{"raw", func() func(string) error {
			hc := &http.Client{Transport: newTransport()}
			return func(channel string) error {
				req, err := http.NewRequest(http.MethodPost, n.URL+"/pub/"+channel, bytes.NewReader(body))
				if err != nil {
					return err
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusCreated {
					return fmt.Errorf("raw POST: %s", resp.Status)
				}
				return nil
			}
		}},
	}
	for _, v := range variants {
		for _, conc := range []int{1, 16, 64} {
			name := fmt.Sprintf("%s/seq", v.name)
			if conc > 1 {
				name = fmt.Sprintf("%s/conc%d", v.name, conc)
			}
			b.Run(name, func(b *testing.B) {
				publish := v.op()
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				run(b, conc, func(i int) error { return publish(channels[i]) })
			})
		}
	}
}

// run calls op b.N times in total from conc goroutines; op gets the
// goroutine's number.
func run(b *testing.B, conc int, op func(int) error) {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	b.ResetTimer()
	for i := range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := op(i); err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if first != nil {
		b.Fatal(first)
	}
}
