package peers

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/centrifugal/centrifuge"
	"github.com/dunglas/mercure"

	"github.com/sessionpush/sessionpush/hub"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/systemtest/farm"
)

// server is one row's server, up in this process.
type server struct {
	name      string
	transport farm.Transport
	streams   int // farm.Options.StreamsPerConn
	addr      string
	// stamped: the server wraps the body or sends other events
	// (farm.Options.StampedOnly).
	stamped bool
	// open prepares channel ch for listeners and returns the position they
	// resume from (Last-Event-ID), if any.
	open func(ch string) string
	// path is a listener's request target for channel ch.
	path func(ch string) string
	// publish sends body to every listener of ch.
	publish func(ch string, body []byte) error
	// ready, if not nil, waits until each of chs has n listeners
	// subscribed: for servers that subscribe after the 200 answer.
	ready func(chs []string, n int) error
	// drop ends the server's side of every connection, for servers that
	// do not notice a client that went away (the floor).
	drop func()
}

// httpServer serves h on 127.0.0.1, over TLS with cert unless tr is
// farm.HTTP1, offering HTTP/2 for farm.TLS2 only; it is closed at the end
// of the test.
func httpServer(t *testing.T, h http.Handler, tr farm.Transport, cert tls.Certificate) string {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tr == farm.HTTP1 {
		srv.Start()
	} else {
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.EnableHTTP2 = tr == farm.TLS2
		srv.StartTLS()
	}
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// hubServer is the embedded relay (hub.Hub) behind net/http, as the
// library serves it: ServeListener under /sub/{channel}.
func hubServer(t *testing.T, name string, tr farm.Transport, cert tls.Certificate) *server {
	h := hub.New(hub.Options{MaxListeners: -1, Logger: slog.New(slog.DiscardHandler)})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		h.ServeListener(w, r, r.PathValue("channel"))
	})
	addr := httpServer(t, mux, tr, cert)
	t.Cleanup(func() { // before the server closes: cleanups run last first
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("hub shutdown: %v", err)
		}
	})
	ctx := context.Background()
	return &server{name: name, transport: tr, addr: addr,
		open: func(ch string) string {
			cur, err := h.Open(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			return cur
		},
		path: func(ch string) string { return "/sub/" + ch },
		publish: func(ch string, body []byte) error {
			_, err := h.Publish(ctx, ch, relay.Message{Body: body, ContentType: "application/json"})
			return err
		},
	}
}

type chanKey struct{}

// centrifugeConnect is the connect command of a unidirectional SSE client
// (Centrifuge's JSON protocol), sent in the cf_connect query parameter.
var centrifugeConnect = url.QueryEscape(`{"id":1,"connect":{}}`)

// centrifugeServer is a Centrifuge node with its in-memory broker, serving
// its SSE handler (unidirectional EventSource clients) under
// /connection/sse. A client is subscribed on the server side, at connect,
// to the channel named by its ch query parameter, as an anonymous user.
func centrifugeServer(t *testing.T) *server {
	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelNone})
	if err != nil {
		t.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		ch, _ := ctx.Value(chanKey{}).(string)
		return centrifuge.ConnectReply{
			Credentials:   &centrifuge.Credentials{},
			Subscriptions: map[string]centrifuge.SubscribeOptions{ch: {}},
		}, nil
	})
	node.OnConnect(func(*centrifuge.Client) {})
	if err := node.Run(); err != nil {
		t.Fatal(err)
	}
	sse := centrifuge.NewSSEHandler(node, centrifuge.SSEConfig{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /connection/sse", func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), chanKey{}, r.URL.Query().Get("ch"))
		sse.ServeHTTP(w, r.WithContext(ctx))
	})
	addr := httpServer(t, mux, farm.HTTP1, tls.Certificate{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		node.Shutdown(ctx)
	})
	return &server{name: "centrifuge", transport: farm.HTTP1, addr: addr, stamped: true,
		open: func(string) string { return "" },
		path: func(ch string) string {
			return "/connection/sse?ch=" + url.QueryEscape(ch) + "&cf_connect=" + centrifugeConnect
		},
		publish: func(ch string, body []byte) error {
			_, err := node.Publish(ch, body)
			return err
		},
		ready: func(chs []string, n int) error {
			deadline := time.Now().Add(time.Minute)
			for _, ch := range chs {
				for node.Hub().NumSubscribers(ch) < n {
					if time.Now().After(deadline) {
						return fmt.Errorf("centrifuge: %d of %d subscribers on %s", node.Hub().NumSubscribers(ch), n, ch)
					}
					time.Sleep(10 * time.Millisecond) // polling the node's count: no event to wait on
				}
			}
			return nil
		},
	}
}

// mercureServer is a Mercure hub with its local transport (the default:
// in memory, no history), anonymous subscribers, serving its subscribe
// handler under /.well-known/mercure. Publishing calls Hub.Publish, not
// the HTTP publish endpoint, as the other servers publish in-process too.
func mercureServer(t *testing.T) *server {
	ctx := context.Background()
	h, err := mercure.NewHub(ctx,
		mercure.WithAnonymous(),
		mercure.WithLogger(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/mercure", h.SubscribeHandler)
	addr := httpServer(t, mux, farm.HTTP1, tls.Certificate{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		h.Stop(ctx)
	})
	return &server{name: "mercure", transport: farm.HTTP1, addr: addr, stamped: true,
		open: func(string) string { return "" },
		path: func(ch string) string { return "/.well-known/mercure?topic=" + url.QueryEscape(topicIRI(ch)) },
		publish: func(ch string, body []byte) error {
			return h.Publish(ctx, &mercure.Update{Topics: []string{topicIRI(ch)}, Event: mercure.Event{Data: string(body)}})
		},
	}
}

func topicIRI(ch string) string { return "https://peers.test/ch/" + ch }

// floorServer is the floor: a net/http handler that hijacks the
// connection, writes the response header and keeps the connection under
// its channel; publish frames the body as one SSE event once and writes
// it to each connection of the channel (shared among GOMAXPROCS goroutines
// when there are many), with nothing else: no buffer, no position, no
// goroutine per connection, no detection of clients that left.
func floorServer(t *testing.T) *server {
	var mu sync.Mutex
	conns := map[string][]net.Conn{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sub/{channel}", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		// Kept before the answer, as the hub keeps its listeners.
		mu.Lock()
		ch := r.PathValue("channel")
		conns[ch] = append(conns[ch], conn)
		mu.Unlock()
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
		brw.Flush() // a failure shows as a missing listener
	})
	addr := httpServer(t, mux, farm.HTTP1, tls.Certificate{})
	drop := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cs := range conns {
			for _, c := range cs {
				c.Close()
			}
		}
		clear(conns)
	}
	t.Cleanup(drop)
	return &server{name: "floor", transport: farm.HTTP1, addr: addr, drop: drop,
		open: func(string) string { return "" },
		path: func(ch string) string { return "/sub/" + ch },
		publish: func(ch string, body []byte) error {
			frame := make([]byte, 0, len(body)+8)
			frame = append(append(append(frame, "data: "...), body...), "\n\n"...)
			mu.Lock()
			cs := conns[ch]
			mu.Unlock()
			if len(cs) < 64 {
				for _, c := range cs {
					if _, err := c.Write(frame); err != nil {
						return err
					}
				}
				return nil
			}
			var wg sync.WaitGroup
			var fail error
			var failMu sync.Mutex
			p := runtime.GOMAXPROCS(0)
			for k := range p {
				wg.Go(func() {
					for i := k; i < len(cs); i += p {
						if _, err := cs[i].Write(frame); err != nil {
							failMu.Lock()
							fail = err
							failMu.Unlock()
							return
						}
					}
				})
			}
			wg.Wait()
			return fail
		},
	}
}
