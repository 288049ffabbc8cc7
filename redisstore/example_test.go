package redisstore_test

import (
	"context"
	"log"
	"os/signal"
	"syscall"

	"github.com/gorilla/sessions"
	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/redisstore"
)

// Several instances of an application behind one Nchan share their channels
// through Redis; each runs idle expiry, and each idle channel is closed by
// one of them. (Not run: it needs Redis and Nchan.)
func Example() {
	client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"localhost:6379"}})
	defer client.Close()
	relay, err := nchan.New("http://127.0.0.1:8081/pub/{channel}", nchan.Options{})
	if err != nil {
		log.Fatal(err)
	}
	mgr, err := sessionpush.New(sessionpush.Config{
		Sessions: sessions.NewCookieStore([]byte("a 32-byte key for this example..")),
		Relay:    relay,
		Store:    redisstore.New(client, redisstore.Options{Prefix: "myapp:push:"}),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go mgr.Run(ctx)

	// ... serve mgr.Middleware(mux), mgr.SubscribeHandler() and so on.
	<-ctx.Done()
}
