package farm_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
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
	for _, c := range []struct {
		tr      farm.Transport
		streams int
	}{{farm.HTTP1, 0}, {farm.TLS1, 0}, {farm.TLS2, 0}, {farm.TLS2, 3}, {farm.WebSocketTLS, 0}} {
		tr := c.tr
		t.Run(fmt.Sprintf("%s-%d", tr, c.streams), func(t *testing.T) {
			conns := map[string]bool{}
			h := hub.New(hub.Options{MaxListeners: -1, Logger: slog.New(slog.DiscardHandler)})
			protos := make(chan string, 100)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case protos <- r.Proto + " " + r.RemoteAddr:
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
			f := farm.Start(t, farm.Options{Listeners: ls, Transport: tr, RootCAs: pem, StreamsPerConn: c.streams})
			for range n {
				p := <-protos
				proto, remote, _ := strings.Cut(p, " ")
				if proto != want {
					t.Errorf("a listener over %s spoke %s", want, proto)
				}
				conns[remote] = true
			}
			if wantConns := n / max(c.streams, 1); len(conns) != wantConns {
				t.Errorf("%d listeners came over %d connections, want %d", n, len(conns), wantConns)
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
