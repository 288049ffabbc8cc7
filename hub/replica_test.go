package hub

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

func id(sec, tag int64) relay.MessageID { return relay.MessageID{Time: sec, Tag: tag} }

// TestReplica: a replica takes the store's IDs, ignores what it has, and
// gives resumers behind its start the gap signal.
func TestReplica(t *testing.T) {
	h, srv := newTestHub(t, Options{BufferLength: 3})
	if ok, err := h.OpenReplica(ch, id(100, 4)); !ok || err != nil {
		t.Fatalf("OpenReplica = %v, %v", ok, err)
	}
	if ok, _ := h.OpenReplica(ch, id(200, 0)); ok {
		t.Error("OpenReplica of an open channel reported true")
	}
	if info := mustInfo(t, h, ch); info.LastMessageID != "100:4" {
		t.Errorf("cursor %q, want 100:4", info.LastMessageID)
	}
	now := time.Now()
	for _, c := range []struct {
		id   relay.MessageID
		want bool
	}{{id(100, 4), false}, {id(100, 5), true}, {id(100, 5), false}, {id(99, 9), false}, {id(101, 0), true}} {
		if ok, err := h.PublishAt(ch, c.id, now, text(c.id.String())); ok != c.want || err != nil {
			t.Errorf("PublishAt(%v) = %v, %v; want %v", c.id, ok, err, c.want)
		}
	}
	s := openStream(t, srv.URL+"/sub/"+ch, http.Header{"Last-Event-Id": {"100:3"}})
	if ev := s.next(t); ev.name != "gap" || ev.data != "100:3" {
		t.Errorf("got %+v, want the gap after 100:3", ev)
	}
	for _, want := range []string{"100:5", "101:0"} {
		if ev := s.next(t); ev.id != want || ev.data != want {
			t.Errorf("got %+v, want %s", ev, want)
		}
	}

	// DropUntil: a waiting listener at 101:0 learns of the gap before the
	// next message.
	waitListeners(t, h, ch, 1)
	if err := h.DropUntil(ch, id(105, 2)); err != nil {
		t.Fatal(err)
	}
	if info := mustInfo(t, h, ch); info.Messages != 0 || info.LastMessageID != "105:2" {
		t.Errorf("after DropUntil: %+v", info)
	}
	if ok, _ := h.PublishAt(ch, id(105, 3), now, text("105:3")); !ok {
		t.Fatal("PublishAt after DropUntil refused")
	}
	if ev := s.next(t); ev.name != "gap" || ev.data != "101:0" {
		t.Errorf("got %+v, want the gap after 101:0", ev)
	}
	if ev := s.next(t); ev.id != "105:3" {
		t.Errorf("got %+v", ev)
	}

	// An expired message is never delivered: TTL counts from published.
	h2 := New(Options{MessageTTL: time.Minute})
	defer h2.Shutdown(context.Background())
	h2.OpenReplica(ch, relay.MessageID{})
	h2.PublishAt(ch, id(1, 0), now.Add(-2*time.Minute), text("old"))
	if info := mustInfo(t, h2, ch); info.Messages != 0 {
		t.Errorf("an expired message is buffered: %+v", info)
	}
}

func TestReplicaListeners(t *testing.T) {
	h, srv := newTestHub(t, Options{})
	h.OpenReplica(ch, relay.MessageID{})
	if err := h.SetListenerLimit(ch, 0); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/sub/" + ch)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("limit 0: %d, want 403", resp.StatusCode)
	}
	h.SetListenerLimit(ch, 1)
	s := openStream(t, srv.URL+"/sub/"+ch, nil)
	waitListeners(t, h, ch, 1)
	if n, req, ok := h.ListenerCount(ch); n != 1 || req.IsZero() || !ok {
		t.Errorf("ListenerCount = %d, %v, %v", n, req, ok)
	}
	if h.CloseUnlistened(ch) {
		t.Error("CloseUnlistened closed a channel with a listener")
	}
	s.resp.Body.Close()
	waitListeners(t, h, ch, 0)
	if !h.CloseUnlistened(ch) {
		t.Error("CloseUnlistened kept a channel without listeners")
	}
	if _, err := h.PublishAt(ch, id(1, 0), time.Now(), text("x")); !errors.Is(err, relay.ErrChannelNotFound) {
		t.Errorf("PublishAt after close: %v", err)
	}
	for _, err := range []error{h.DropUntil(ch, id(1, 0)), h.SetListenerLimit(ch, 1)} {
		if !errors.Is(err, relay.ErrChannelNotFound) {
			t.Errorf("after close: %v", err)
		}
	}
	h.Shutdown(context.Background())
	if _, err := h.OpenReplica(ch, relay.MessageID{}); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("OpenReplica after Shutdown: %v", err)
	}
}

// TestReplicaResumeAhead: a listener that resumes from a message that the
// replica has not applied yet (it came from another process, which had it
// first) gets only the messages after it, once they come, and none twice:
// on a hijacked stream, parked meanwhile, as on one served on the
// ResponseWriter, which waits on the channel's wake.
func TestReplicaResumeAhead(t *testing.T) {
	for _, hijack := range []bool{true, false} {
		t.Run(map[bool]string{true: "hijacked", false: "responsewriter"}[hijack], func(t *testing.T) {
			h, srv := newTestHub(t, Options{})
			h.noHijack = !hijack
			if ok, err := h.OpenReplica(ch, id(100, 3)); !ok || err != nil {
				t.Fatalf("OpenReplica = %v, %v", ok, err)
			}
			// The listener had 100:5 elsewhere; this replica is at 100:3.
			s := openStream(t, srv.URL+"/sub/"+ch, http.Header{"Last-Event-Id": {"100:5"}})
			if hijack {
				eventually(t, "a parked stream", func() bool { return parkedCount(h, ch) == 1 })
			} else {
				waitListeners(t, h, ch, 1)
			}
			now := time.Now()
			for _, i := range []int64{4, 5, 6} {
				if ok, err := h.PublishAt(ch, id(100, i), now, text(id(100, i).String())); !ok || err != nil {
					t.Fatalf("PublishAt(100:%d) = %v, %v", i, ok, err)
				}
			}
			if ev := s.next(t); ev.id != "100:6" || ev.name != "" {
				t.Errorf("got %+v, want 100:6, the first message after the listener's", ev)
			}
			if hijack {
				eventually(t, "parked again", func() bool { return parkedCount(h, ch) == 1 })
			}
			if ok, _ := h.PublishAt(ch, id(100, 7), now, text("100:7")); !ok {
				t.Fatal("PublishAt(100:7) refused")
			}
			if ev := s.next(t); ev.id != "100:7" || ev.name != "" {
				t.Errorf("got %+v, want 100:7", ev)
			}
		})
	}
}
