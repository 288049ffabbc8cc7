package redishub_test

import (
	"context"
	"log"
	"net/http"
	"os/signal"
	"syscall"

	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/redishub"
	"github.com/sessionpush/sessionpush/redisstore"
)

// Every instance of an application runs the same code on the same Redis:
// a listener may land on any instance, a push from any instance reaches it,
// and a listener cut off resumes on another instance where it left off.
// (Not run: it needs Redis.)
func Example() {
	client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"localhost:6379"}})
	defer client.Close()
	relay, err := redishub.New(client, redishub.Options{})
	if err != nil {
		log.Fatal(err)
	}
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions: sessions.NewCookieStore([]byte("a 32-byte key for this example..")),
		Relay:    relay, // Manager.Shutdown shuts it down
		Store:    redisstore.New(client, redisstore.Options{}),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go mgr.Run(ctx) // idle expiry: each idle channel is closed by one instance

	mux := http.NewServeMux()
	mux.Handle("/subscribe", mgr.SubscribeHandler())
	mux.Handle("GET /sub/{channel}", mgr.ListenHandler())
	srv := &http.Server{Addr: ":8080", Handler: mgr.Middleware(mux)}
	go srv.ListenAndServe()

	<-ctx.Done()
	srv.Shutdown(context.Background())
	mgr.Shutdown(context.Background())
}
