package sessionpushtest_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/relay"
	"github.com/sessionpush/sessionpush/sessionpushtest"
)

func TestRelayRecords(t *testing.T) {
	ctx := context.Background()
	r := sessionpushtest.NewRelay()
	if _, err := r.Publish(ctx, "c", relay.Message{Body: []byte("x")}); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("publish before open: %v", err)
	}
	cur, err := r.Open(ctx, "c")
	if err != nil || cur != relay.NoCursor {
		t.Fatalf("Open = %q, %v", cur, err)
	}
	body := []byte("hello")
	rc, err := r.Publish(ctx, "c", relay.Message{Body: body, ContentType: "text/plain"})
	if err != nil || rc.Queued != 1 {
		t.Fatalf("Publish = %+v, %v", rc, err)
	}
	body[0] = 'J' // the relay keeps its own copy
	if msgs := r.Messages("c"); len(msgs) != 1 || string(msgs[0].Body) != "hello" {
		t.Fatalf("Messages = %+v", msgs)
	}
	if info, _ := r.Info(ctx, "c"); info.LastMessageID != rc.ID || info.Messages != 1 {
		t.Fatalf("Info = %+v, receipt %+v", info, rc)
	}
	if err := r.Close(ctx, "c"); err != nil || r.IsOpen("c") {
		t.Fatalf("Close = %v, open %v", err, r.IsOpen("c"))
	}
	if err := r.Close(ctx, "c"); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Fatalf("second Close = %v", err)
	}
	if got := r.Published(); len(got) != 1 || got[0].Channel != "c" {
		t.Fatalf("Published = %+v", got)
	}
	if _, err := r.Open(ctx, "../c"); !errors.Is(err, relay.ErrInvalidID) {
		t.Fatalf("Open(invalid) = %v", err)
	}
}

func TestKitSignIn(t *testing.T) {
	kit, err := sessionpushtest.NewKit(sessionpush.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var seen *sessionpush.Channel
	h := kit.Manager.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = sessionpush.CurrentChannel(r)
		if err := seen.PushJSON(r.Context(), map[string]int{"n": 1}); err != nil {
			t.Error(err)
		}
	}))
	r, ch, err := kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice")
	if err != nil {
		t.Fatal(err)
	}
	h.ServeHTTP(httptest.NewRecorder(), r)
	if seen == nil || seen.ID != ch || seen.User != "alice" || !kit.Relay.IsOpen(ch) {
		t.Fatalf("handler saw %+v, want alice on open channel %s", seen, ch)
	}
	var got map[string]int
	if err := kit.Relay.DecodeJSON(ch, &got); err != nil || got["n"] != 1 {
		t.Fatalf("DecodeJSON = %v, %v", got, err)
	}
	if _, other, _ := kit.SignIn(httptest.NewRequest("GET", "/", nil), "alice"); other == ch {
		t.Fatal("two sign-ins share a channel")
	}
}

func TestJSONSerializerRoundTrip(t *testing.T) {
	var sz sessionpushtest.JSONSerializer
	b, err := sz.Serialize(map[any]any{"user": 42, "name": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	var got map[any]any
	if err := sz.Deserialize(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["user"] != float64(42) || got["name"] != "alice" || len(got) != 2 {
		t.Errorf("round trip: %#v", got)
	}
	if _, err := sz.Serialize(map[any]any{1: "x"}); err == nil || !strings.Contains(err.Error(), "not a string") {
		t.Errorf("a non-string key: %v, want an error naming it", err)
	}
	if err := sz.Deserialize([]byte("{"), &got); err == nil {
		t.Error("malformed JSON decoded without error")
	}
}
