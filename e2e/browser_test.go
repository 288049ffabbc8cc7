package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// Every test runs for each relay (embedded, nchan) and transport
// (websocket, eventsource, longpoll): the page is opened with
// ?transports=<transport>, so the client may use that one only, and the
// state line must name it.

// TestSignInAndPush: a person signs in, the page listens, and two pushes to
// oneself show up in order, each with the message id that the transport
// carried.
func TestSignInAndPush(t *testing.T) {
	eachRow(t, func(t *testing.T, relay, transport string) {
		s := startSite(t, relay, "")
		alice := newPerson(t, "alice")
		alice.open(s.URL, transport)
		alice.signIn("alice")
		alice.listening(transport)

		alice.push("first")
		alice.expectMessages("push from alice: first")
		alice.push("second")
		alice.expectMessages("push from alice: first", "push from alice: second")

		idLine := regexp.MustCompile(`^id (\d+):(\d+) · message · received `)
		for _, m := range alice.messages() {
			if !idLine.MatchString(m.Meta) {
				t.Errorf("%q shows %q; want \"id <seconds>:<tag> · message · received …\"", m.Text, m.Meta)
			}
		}
		alice.screenshot("")
	})
}

// TestTwoUsers: alice and bob, each in a browser context of their own, get
// only their own pushes; a broadcast reaches both.
func TestTwoUsers(t *testing.T) {
	eachRow(t, func(t *testing.T, relay, transport string) {
		s := startSite(t, relay, "")
		alice, bob := newPerson(t, "alice"), newPerson(t, "bob")
		for _, p := range []*page{alice, bob} {
			p.open(s.URL, transport)
			p.signIn(p.name)
		}
		if a, b := alice.listening(transport), bob.listening(transport); a == b {
			t.Fatalf("alice and bob both listen on channel %s", a)
		}

		alice.push("for alice")
		alice.expectMessages("push from alice: for alice")
		bob.push("for bob")
		bob.expectMessages("push from bob: for bob")

		// Each channel delivers in order, so had a push reached the other
		// person, it would be listed before the broadcast.
		alice.broadcast("for everyone")
		alice.waitPrefix("note", "Broadcast to 2 channel(s), ") // listeners: as many as were connected at that instant
		alice.expectMessages("push from alice: for alice", "broadcast from alice: for everyone")
		bob.expectMessages("push from bob: for bob", "broadcast from alice: for everyone")

		alice.screenshot("alice")
		bob.screenshot("bob")
	})
}

// TestLogout: signing out in one tab ends the stream of another tab of the
// same session: its client finds /subscribe answering 401 and says so.
func TestLogout(t *testing.T) {
	eachRow(t, func(t *testing.T, relay, transport string) {
		s := startSite(t, relay, "")
		alice := newPerson(t, "alice")
		alice.open(s.URL, transport)
		alice.signIn("alice")
		channel := alice.listening(transport)
		alice.push("before")
		alice.expectMessages("push from alice: before")

		other := alice.newTab("alice's other tab")
		other.open(s.URL, transport)
		other.waitText("user", "alice") // the same session
		if c := other.listening(transport); c != channel {
			t.Errorf("the other tab listens on %s; want the session's channel %s", c, channel)
		}
		other.signOut()

		alice.waitText("state", "Signed out (in another tab?): reload the page.")
		alice.push("after")
		alice.waitPrefix("note", "Error: /push: 401")
		alice.expectMessages("push from alice: before")
		alice.screenshot("")
	})
}

// TestRestart: the relay restarts (the program on the embedded relay,
// nginx on Nchan). The page shows that it reconnects, reconnects by itself,
// and then shows what is pushed. Both relays keep channels in memory, so a
// restart loses every channel and buffered message: the session (its
// cookie signed with -session-key) survives, and /subscribe opens its
// channel again (embedded: the same ID, which the session names; Nchan: the
// app sees its channel gone and binds a new one).
func TestRestart(t *testing.T) {
	eachRow(t, func(t *testing.T, relay, transport string) {
		s := startSite(t, relay, "")
		alice := newPerson(t, "alice")
		alice.open(s.URL, transport)
		alice.signIn("alice")
		before := alice.listening(transport)
		alice.push("before the restart")
		alice.expectMessages("push from alice: before the restart")

		s.stopRelay()
		alice.waitPrefix("state", "Reconnecting in ")
		s.startRelay()

		after := alice.listening(transport)
		switch {
		case relay == "embedded" && after != before:
			t.Errorf("after the restart: channel %s; want the session's channel %s again", after, before)
		case relay == "nchan" && after == before:
			t.Errorf("after the restart: channel %s again; want a new one (Nchan lost it)", after)
		}
		alice.push("after the restart")
		alice.expectMessages("push from alice: before the restart", "push from alice: after the restart")
		alice.waitText("user", "alice") // still signed in
		alice.screenshot("")
	})
}

// TestOutage: the relay keeps running while the network between the page
// and the site drops. Messages pushed meanwhile (from another tab of the
// same session, on another route) wait in the channel's buffer; the page
// shows that it reconnects, and once the network is back it shows them, in
// order, each once.
func TestOutage(t *testing.T) {
	eachRow(t, func(t *testing.T, relay, transport string) {
		net := newNetwork(t)
		s := startSite(t, relay, net.Addr()) // Nchan: WebSockets come from the network's origin
		net.connect(s.URL[len("http://"):])

		alice := newPerson(t, "alice")
		alice.open("http://"+net.Addr(), transport)
		alice.signIn("alice")
		channel := alice.listening(transport)
		alice.push("one")
		alice.expectMessages("push from alice: one")

		net.cut()
		alice.waitPrefix("state", "Reconnecting in ")

		// Another tab of the session, straight to the site; long-poll,
		// which needs no Origin check.
		phone := alice.newTab("alice's other tab")
		phone.open(s.URL, "longpoll")
		phone.waitText("user", "alice")
		if c := phone.listening("longpoll"); c != channel {
			t.Fatalf("the other tab listens on %s; want %s", c, channel)
		}
		phone.push("two")
		phone.expectMessages("push from alice: two")
		phone.push("three")
		phone.expectMessages("push from alice: two", "push from alice: three")
		alice.expectMessages("push from alice: one") // still cut off

		net.restore()
		alice.expectMessages("push from alice: one", "push from alice: two", "push from alice: three")
		if c := alice.listening(transport); c != channel {
			t.Errorf("after the outage: channel %s; want %s", c, channel)
		}
		// A message after the resumed ones comes next: nothing was
		// delivered twice in between.
		alice.push("four")
		alice.expectMessages("push from alice: one", "push from alice: two", "push from alice: three", "push from alice: four")
		alice.screenshot("")
	})
}

// broadcastChannel is sessionpush.SuggestedBroadcastChannel, the ID that
// ../example/nginx/nginx.conf has a location for. (Importing the root
// package would bring its dependencies into this module.)
const broadcastChannel = "b0adca57-0000-4000-8000-000000000000"

// TestBroadcastChannel: the example runs with -broadcast-channel (on Nchan,
// behind the shipped config's location for that channel), so every page
// also listens to the broadcast channel, on a second stream of its
// transport. One click on "Broadcast" reaches alice and bob, each once and
// over the broadcast channel, while each still gets only their own pushes;
// the note shows the listeners that the server counted.
func TestBroadcastChannel(t *testing.T) {
	eachRow(t, func(t *testing.T, relay, transport string) {
		s := startSite(t, relay, "", "-broadcast-channel", broadcastChannel)
		alice, bob := newPerson(t, "alice"), newPerson(t, "bob")
		for _, p := range []*page{alice, bob} {
			p.open(s.URL, transport)
			p.signIn(p.name)
		}
		a, ab := alice.listeningToBroadcasts(transport)
		b, bb := bob.listeningToBroadcasts(transport)
		if a == b {
			t.Fatalf("alice and bob both listen on channel %s", a)
		}
		if ab != broadcastChannel || bb != ab {
			t.Fatalf("broadcast channels: alice %s, bob %s; want %s", ab, bb, broadcastChannel)
		}

		alice.push("for alice")
		alice.expectMessages("push from alice: for alice")
		bob.push("for bob")
		bob.expectMessages("push from bob: for bob")

		alice.broadcast("for everyone")
		alice.waitPrefix("note", "Broadcast to 1 channel(s), ") // one publish, to the broadcast channel
		alice.expectMessages("push from alice: for alice", "broadcast from alice: for everyone")
		bob.expectMessages("push from bob: for bob", "broadcast from alice: for everyone")

		// A push after it comes next on each page: the broadcast came once,
		// and the other person's pushes never.
		alice.push("after")
		bob.push("after")
		alice.expectMessages("push from alice: for alice", "broadcast from alice: for everyone", "push from alice: after")
		bob.expectMessages("push from bob: for bob", "broadcast from alice: for everyone", "push from bob: after")
		for _, p := range []*page{alice, bob} {
			for _, m := range p.messages() {
				if onBroadcast := strings.HasSuffix(m.Meta, " · on the broadcast channel"); onBroadcast != (m.Kind == "broadcast") {
					t.Errorf("%s: %q shows %q: on the broadcast channel %v", p.name, m, m.Meta, onBroadcast)
				}
			}
		}
		alice.screenshot("alice")
		bob.screenshot("bob")
	})
}

// TestHTTPS: one pass of the page over HTTPS with HTTP/2 (the example's
// -tls-self-signed; Chromium ignores certificate errors), on the embedded
// relay, for every transport (WebSocket upgrades over HTTP/1.1: net/http
// does not offer WebSocket over HTTP/2). After more than twice the relay's
// -write-timeout of silence, the page is still listening without having
// reconnected (its state line never changed) and the next push shows up,
// once.
func TestHTTPS(t *testing.T) {
	needBrowser(t)
	const writeTimeout = 300 * time.Millisecond
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			s := startSite(t, "embedded", "", "-tls-self-signed", "-secure", "-write-timeout", writeTimeout.String())
			if !strings.HasPrefix(s.URL, "https://") {
				t.Fatalf("site at %s, want https", s.URL)
			}
			alice := newPerson(t, "alice")
			alice.open(s.URL, transport)
			alice.signIn("alice")
			channel := alice.listening(transport)
			if proto := alice.eval(`performance.getEntriesByType('navigation')[0].nextHopProtocol`); proto != "h2" {
				t.Errorf("the page came over %q, want h2", proto)
			}
			alice.push("before")
			alice.expectMessages("push from alice: before")

			alice.eval(`(() => {
				window.stateChanges = 0;
				new MutationObserver(() => window.stateChanges++).observe(document.getElementById('state'),
					{childList: true, characterData: true, subtree: true});
				return '';
			})()`)
			time.Sleep(3 * writeTimeout) // the silence under test, not a synchronisation
			if n := alice.eval(`String(window.stateChanges)`); n != "0" {
				t.Errorf("the state line changed %s times during the silence (now %q); want no reconnection", n, alice.text("state"))
			}
			alice.push("after the silence")
			alice.expectMessages("push from alice: before", "push from alice: after the silence")
			if c := alice.listening(transport); c != channel {
				t.Errorf("listening on %s, want %s", c, channel)
			}
			if n := alice.eval(`String(window.stateChanges)`); n != "0" {
				t.Errorf("the state line changed %s times (now %q); want no reconnection", n, alice.text("state"))
			}
			alice.screenshot("")
		})
	}
}
