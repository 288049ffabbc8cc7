package nchan

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sessionpush/sessionpush/relay"
)

// Channel-info bodies as Nchan 1.3.6 and the push module 0.712 answer them.
var infoSeeds = []struct {
	name string
	body string
	want channelInfo
}{
	{"0.712 plain", "queued messages: 0\r\nlast requested: -1 sec. ago (-1=never)\r\nactive subscribers: 0",
		channelInfo{requested: -1}},
	{"nchan plain", "queued messages: 2\r\nlast requested: -1 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1795742138:1",
		channelInfo{messages: 2, requested: -1, lastID: "1795742138:1", hasLastID: true}},
	{"nchan plain, LF and final newline", "queued messages: 3\nlast requested: 12 sec. ago\nactive subscribers: 4\nlast message id: 0:0\n",
		channelInfo{messages: 3, subscribers: 4, requested: 12, lastID: "0:0", hasLastID: true}},
	{"0.712 json", `{"messages": 1, "requested": -1, "subscribers": 0 }`,
		channelInfo{messages: 1, requested: -1}},
	{"nchan json", `{"messages": 2, "requested": -1, "subscribers": 0, "last_message_id": "1795742138:1" }`,
		channelInfo{messages: 2, requested: -1, lastID: "1795742138:1", hasLastID: true}},
	{"nchan xml", "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\r\n<channel>\r\n  <messages>2</messages>\r\n  <requested>5</requested>\r\n  <subscribers>1</subscribers>\r\n  <last_message_id>1795742138:1</last_message_id>\r\n</channel>",
		channelInfo{messages: 2, subscribers: 1, requested: 5, lastID: "1795742138:1", hasLastID: true}},
	{"0.712 xml", "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\r\n<channel>\r\n  <messages>1</messages>\r\n  <requested>-1</requested>\r\n  <subscribers>0</subscribers>\r\n</channel>",
		channelInfo{messages: 1, requested: -1}},
	{"0.712 yaml", "---\r\nmessages: 1\r\nrequested: -1\r\nsubscribers 0\r\n",
		channelInfo{messages: 1, requested: -1}},
	{"nchan plain, tag wrapped past 32767", "queued messages: 10\r\nlast requested: -1 sec. ago\r\nactive subscribers: 0\r\nlast message id: 1795749072:-30192",
		channelInfo{messages: 10, requested: -1, lastID: "1795749072:-30192", hasLastID: true}},
	{"nchan yaml", "---\nmessages: 2\nrequested: -1\nsubscribers: 0\nlast_message_id: \"1795742138:1\"\n\n",
		channelInfo{messages: 2, requested: -1, lastID: "1795742138:1", hasLastID: true}},
}

func TestParseInfo(t *testing.T) {
	for _, s := range infoSeeds {
		got, err := parseInfo([]byte(s.body))
		if err != nil || got != s.want {
			t.Errorf("%s: parseInfo = %+v, %v; want %+v", s.name, got, err, s.want)
		}
	}
}

func TestParseInfoRejects(t *testing.T) {
	for _, body := range []string{
		"",
		"<html><head><title>500 Internal Server Error</title></head></html>",
		"No channel id provided.",
		"queued messages: 1",    // no subscriber count
		"active subscribers: 1", // no message count
		"queued messages: x\r\nactive subscribers: 0",
		"queued messages: -1\r\nactive subscribers: 0",
		"queued messages: 1\r\nactive subscribers: 0\r\nlast message id: 17:x",
		`{"messages": 1}`,
		`{"messages": "1", "subscribers": 0}`,
		`{"messages": 1, "subscribers": 0, "last_message_id": "junk"}`,
		"<channel><messages>1</messages></channel>",
	} {
		if got, err := parseInfo([]byte(body)); err == nil {
			t.Errorf("parseInfo(%q) = %+v, want an error", body, got)
		}
	}
}

func TestInfoStates(t *testing.T) {
	cases := []struct {
		ci     channelInfo
		dying  bool
		cursor string
	}{
		{channelInfo{messages: 1, lastID: "5:0", hasLastID: true}, false, "5:0"},
		{channelInfo{messages: 0, lastID: "5:0", hasLastID: true}, true, "5:0"}, // deleted or expired, no listener
		{channelInfo{messages: 0, subscribers: 1, lastID: "5:0", hasLastID: true}, false, "5:0"},
		{channelInfo{messages: 0, lastID: "0:0", hasLastID: true}, false, relay.NoCursor}, // made by a subscriber
		{channelInfo{messages: 0}, false, relay.NoCursor},                                 // push module, empty
		{channelInfo{messages: 3}, false, ""},                                             // push module, IDs unknown
	}
	for _, c := range cases {
		if c.ci.dying() != c.dying || c.ci.cursor() != c.cursor {
			t.Errorf("%+v: dying %v cursor %q, want %v %q", c.ci, c.ci.dying(), c.ci.cursor(), c.dying, c.cursor)
		}
	}
}

// FuzzParseInfo checks that any body either fails cleanly or yields counts
// and an ID that make sense, and that the result survives a round trip
// through the plain format.
func FuzzParseInfo(f *testing.F) {
	for _, s := range infoSeeds {
		f.Add([]byte(s.body))
	}
	f.Add([]byte("queued messages: 1\r\nactive subscribers: 0\r\nlast message id: 1:1,[0],-"))
	f.Add([]byte("\ufeff{\"messages\": 1e3, \"subscribers\": 0}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		ci, err := parseInfo(body)
		if err != nil {
			return
		}
		if ci.messages < 0 || ci.subscribers < 0 {
			t.Fatalf("negative count in %+v", ci)
		}
		if ci.hasLastID {
			if _, err := relay.ParseMessageID(strings.Replace(ci.lastID, ":-", ":", 1)); err != nil {
				t.Fatalf("accepted last message id %q: %v", ci.lastID, err)
			}
		} else if ci.lastID != "" {
			t.Fatalf("lastID %q without hasLastID", ci.lastID)
		}
		plain := fmt.Sprintf("queued messages: %d\r\nlast requested: %d sec. ago\r\nactive subscribers: %d", ci.messages, ci.requested, ci.subscribers)
		if ci.hasLastID {
			plain += "\r\nlast message id: " + ci.lastID
		}
		again, err := parseInfo([]byte(plain))
		if err != nil || again != ci {
			t.Fatalf("round trip of %+v: %+v, %v", ci, again, err)
		}
	})
}

// TestValidLastIDAgreesWithParseMessageID holds the last message ID that
// Nchan reports to the one rule of [relay.ParseMessageID], with the one
// exception Nchan needs: a negative tag.
func TestValidLastIDAgreesWithParseMessageID(t *testing.T) {
	for s, want := range map[string]bool{
		"0:0": true, "1795749072:3": true, "1795749072:-30192": true,
		"1795749072:999999999999999999": true, "1795749072:1000000000000000000": false,
		"-1:0": false, "1:--1": false, "1:+1": false, "1: 1": false, ":1": false, "1:": false,
		"1:2:3": false, "1:2,[0],-": false, "a:b": false, "": false,
	} {
		if got := validLastID(s); got != want {
			t.Errorf("validLastID(%q) = %v, want %v", s, got, want)
		}
		if strings.Contains(s, ":-") {
			continue // the exception
		}
		if _, err := relay.ParseMessageID(s); want != (err == nil) {
			t.Errorf("ParseMessageID(%q) = %v, but validLastID takes it: %v", s, err, want)
		}
	}
}
