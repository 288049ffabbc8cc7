package nchan_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/sessionpush/sessionpush/nchan"
	"github.com/sessionpush/sessionpush/relay"
)

// The publisher URL names where the channel ID goes, in the path or in the
// query; anything else is refused.
func ExampleNew() {
	for _, tmpl := range []string{
		"http://127.0.0.1:8080/pub/{channel}",             // nchan_channel_id $1
		"http://127.0.0.1:8080/publish?channel={channel}", // push module 0.712
		"http://127.0.0.1:8080/pub",
		"http://{channel}.example/pub",
	} {
		_, err := nchan.New(tmpl, nchan.Options{})
		fmt.Println(err)
	}
	// Output:
	// <nil>
	// <nil>
	// nchan: publisher URL "http://127.0.0.1:8080/pub": must contain {channel} exactly once, not 0 times
	// nchan: publisher URL "http://{channel}.example/pub": {channel} must be in the path or the query
}

// Channel IDs are validated before any request is made, so nothing can be
// smuggled into the URL (no server listens on port 1 here).
func ExampleClient_Publish_invalidID() {
	c, err := nchan.New("http://127.0.0.1:1/pub/{channel}", nchan.Options{})
	if err != nil {
		panic(err)
	}
	_, err = c.Publish(context.Background(), "../admin", relay.Message{Body: []byte("hi")})
	fmt.Println(errors.Is(err, relay.ErrInvalidID))
	fmt.Println(err)

	var e *nchan.Error
	if errors.As(err, &e) {
		fmt.Printf("op=%s status=%d\n", e.Op, e.Status)
	}
	// Output:
	// true
	// nchan: publish "../admin": relay: invalid channel id: byte 2 is outside [A-Za-z0-9._-]
	// op=publish status=0
}

// Stats counts what the Client sent and how calls failed; RelayStats gives
// the same numbers as relay.Stat for a metrics exporter. Here the publisher
// port is closed and retrying is off, so the call fails as unavailable.
func ExampleClient_Stats() {
	c, err := nchan.New("http://127.0.0.1:1/pub/{channel}", nchan.Options{MaxRetryTime: -1})
	if err != nil {
		panic(err)
	}
	_, err = c.Info(context.Background(), "news")
	fmt.Println(err != nil)
	st := c.Stats()
	fmt.Printf("GET requests: %d, unavailable: %d, retries: %d\n", st.Requests.Get, st.Failures.Unavailable, st.Retries)
	for _, s := range c.RelayStats() {
		if s.Name == "failures_total" && s.Labels[0][1] == "unavailable" {
			fmt.Println(s.Name, s.Labels, s.Value)
		}
	}
	// Output:
	// true
	// GET requests: 1, unavailable: 1, retries: 0
	// failures_total [[reason unavailable]] 1
}
