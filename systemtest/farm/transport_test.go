package farm_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// TestTransports: over each transport the listeners connect with the
// protocol asked for and get every message once.
func TestTransports(t *testing.T) {
	cert, pem := farm.TestCert(t)
	for _, tr := range []farm.Transport{farm.HTTP1, farm.TLS1, farm.TLS2, farm.WebSocketTLS} {
		t.Run(string(tr), func(t *testing.T) {
			h := hub.New(hub.Options{MaxListeners: -1, Logger: slog.New(slog.DiscardHandler)})
			protos := make(chan string, 100)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case protos <- r.Proto:
				default:
				}
				h.ServeListener(w, r, r.URL.Path[len("/sub/"):])
			}))
			want := "HTTP/1.1"
			if tr == farm.HTTP1 {
				srv.Start()
			} else {
				srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
				srv.EnableHTTP2 = tr == farm.TLS2
				srv.StartTLS()
				if tr == farm.TLS2 {
					want = "HTTP/2.0"
				}
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				h.Shutdown(ctx)
				srv.Close()
			})
			ctx := context.Background()
			const n = 6
			var ls []farm.Listener
			for i := range n {
				ch := fmt.Sprintf("c%d", i%2)
				cur, err := h.Open(ctx, ch)
				if err != nil {
					t.Fatal(err)
				}
				ls = append(ls, farm.Listener{Addr: srv.Listener.Addr().String(), Path: "/sub/" + ch, LastEventID: cur})
			}
			f := farm.Start(t, farm.Options{Listeners: ls, Transport: tr, RootCAs: pem})
			for range n {
				if p := <-protos; p != want {
					t.Errorf("a listener over %s spoke %s", want, p)
				}
			}
			for _, ch := range []string{"c0", "c1"} {
				if _, err := h.Publish(ctx, ch, relay.Message{Body: farm.Body("m", time.Now(), 0)}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := f.Wait("m", n, time.Minute); err != nil {
				t.Fatal(err)
			}
			if v, err := f.Check([]string{"m"}, 50*time.Millisecond); err != nil || v != "" {
				t.Fatalf("check: %q, %v", v, err)
			}
		})
	}
}

// TestStampedOnly: with StampedOnly, a stamp inside an envelope counts
// under its key, and events without a stamp are dropped.
func TestStampedOnly(t *testing.T) {
	h, addr, _ := server(t)
	ctx := context.Background()
	cur, _ := h.Open(ctx, "s")
	f := farm.Start(t, farm.Options{Listeners: []farm.Listener{{Addr: addr, Path: "/sub/s", LastEventID: cur}}, StampedOnly: true})
	h.Publish(ctx, "s", relay.Message{Body: []byte(`{"connect":{}}`)})
	h.Publish(ctx, "s", relay.Message{Body: append(append([]byte(`{"pub":{"data":`), farm.Body("k", time.Now(), 0)...), "}}"...)})
	s, err := f.Wait("k", 1, time.Minute)
	if err != nil || s.Stamped != 1 {
		t.Fatalf("%+v, %v", s, err)
	}
	if v, err := f.Check([]string{"k"}, 50*time.Millisecond); err != nil || v != "" {
		t.Fatalf("check: %q, %v", v, err)
	}
}
