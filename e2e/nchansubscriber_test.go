package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdpnetwork "github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// TestNchanSubscriber: Nchan's own browser client, NchanSubscriber from the
// npm package nchan, in Chromium, over each of its transports, on both
// relays. The page is a document of the site (through a network that the
// test can cut), with the session cookie; it loads NchanSubscriber.js from
// clients/node_modules and listens on the url of /subscribe, from its
// cursor. In every scenario, no page error (uncaught exception, console
// error, window.onerror).
//
//   - cursor: started from the cursor of a /subscribe made after a first
//     message, it gets exactly the messages pushed after that /subscribe,
//     in order.
//   - cut: the network drops the connection and refuses new ones while two
//     messages are pushed; once it is back, the client gets them, then the
//     next push: each once, in order.
//   - stopstart: the same across stop() and start().
//   - overflow: after stop(), more messages are pushed than the channel's
//     buffer holds (10); after start() every message still buffered
//     arrives once, in order, then the next push.
//   - signout: after sign-out the client gets no message, even once the
//     person signed in again and pushes to the new session's channel.
func TestNchanSubscriber(t *testing.T) {
	needBrowser(t)
	needNPMPackages(t)
	src, err := os.ReadFile(filepath.Join(clientsDir, "node_modules", "nchan", "NchanSubscriber.js"))
	if err != nil {
		t.Fatal(err)
	}
	scenarios := []struct {
		name string
		run  func(t *testing.T, s *thirdPartySite, p *nchanPage, transport string)
	}{
		{"cursor", nchanCursor},
		{"cut", nchanCut},
		{"stopstart", nchanStopStart},
		{"overflow", nchanOverflow},
		{"signout", nchanSignOut},
	}
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) {
			s := startThirdPartySite(t, relay)
			for _, transport := range transports {
				for _, sc := range scenarios {
					t.Run(transport+"/"+sc.name, func(t *testing.T) {
						p := openNchanPage(t, s, string(src))
						sc.run(t, s, p, transport)
						p.noErrors()
					})
				}
			}
		})
	}
}

func nchanCursor(t *testing.T, s *thirdPartySite, p *nchanPage, transport string) {
	a := p.signIn(s, "alice")
	p.listen("sub", a.subscribeBetween(), transport)
	p.waitMessages("sub", "m1")
	a.push("m2", "m3")
	p.waitMessages("sub", "m1", "m2", "m3")
}

func nchanCut(t *testing.T, s *thirdPartySite, p *nchanPage, transport string) {
	a := p.signIn(s, "bob")
	p.listen("sub", a.subscribe(), transport)
	a.push("m1")
	p.waitMessages("sub", "m1")

	disconnects := p.count("sub", "disconnect")
	refused := s.cut()
	p.waitCount("sub", "disconnect", disconnects+1)
	s.waitRefused(t, refused) // it tried to reconnect during the cut
	a.push("m2", "m3")
	s.net.restore()
	p.waitMessages("sub", "m1", "m2", "m3")
	a.push("m4")
	p.waitMessages("sub", numbered("m", 1, 4)...)
}

func nchanStopStart(t *testing.T, s *thirdPartySite, p *nchanPage, transport string) {
	a := p.signIn(s, "carol")
	p.listen("sub", a.subscribe(), transport)
	a.push("m1")
	p.waitMessages("sub", "m1")
	p.call("sub", "stop")
	a.push("m2", "m3")
	p.call("sub", "start")
	p.waitMessages("sub", "m1", "m2", "m3")
	a.push("m4")
	p.waitMessages("sub", numbered("m", 1, 4)...)
}

// bufferLength is the channel's buffer on both relays
// (hub.Options.BufferLength's default, nchan_message_buffer_length).
const bufferLength = 10

func nchanOverflow(t *testing.T, s *thirdPartySite, p *nchanPage, transport string) {
	a := p.signIn(s, "dave")
	p.listen("sub", a.subscribe(), transport)
	a.push("m1")
	p.waitMessages("sub", "m1")
	p.call("sub", "stop")
	last := 2 + bufferLength // m2 … m12: one more than the buffer holds
	a.push(numbered("m", 2, last)...)
	p.call("sub", "start")
	want := append([]string{"m1"}, numbered("m", last-bufferLength+1, last)...) // m2 fell out
	p.waitMessages("sub", want...)
	a.push(fmt.Sprintf("m%d", last+1))
	p.waitMessages("sub", append(want, fmt.Sprintf("m%d", last+1))...)
}

func nchanSignOut(t *testing.T, s *thirdPartySite, p *nchanPage, transport string) {
	a := p.signIn(s, "frank")
	old := a.subscribe()
	p.listen("old", old, transport)
	a.push("m1")
	p.waitMessages("old", "m1")

	// Sign out in the page, as the example's form does: the relay ends
	// the listener, and every reconnection is refused.
	ended := p.count("old", "disconnect") + p.count("old", "error")
	p.eval(`fetch('/logout', {method: 'POST'}).then((r) => r.ok ? '' : 'logout: ' + r.status)`)
	p.waitJS("the old client's connection to end and a reconnection to be refused",
		fmt.Sprintf(`subs.old.events.filter((e) => e === 'disconnect' || e.startsWith('error')).length >= %d`, ended+2))

	// Signed in again: a new session with a new channel, which a second
	// client listens to. A push reaches it, and not the old client.
	b := p.signIn(s, "frank")
	sub := b.subscribe()
	if sub.Channel == old.Channel {
		t.Fatalf("signed in again: channel %s, the signed-out session's", sub.Channel)
	}
	p.listen("new", sub, transport)
	b.push("m2")
	p.waitMessages("new", "m2")
	checkMessages(t, "the signed-out client", p.messages("old"), []string{"m1"})
	t.Logf("the signed-out client's events: %s", p.eval(`subs.old.events.join(', ')`))
}

// nchanPage is a tab with NchanSubscriber loaded: a document of the site,
// through its network, in a browser context of its own (a cookie jar).
type nchanPage struct {
	t    *testing.T
	ctx  context.Context
	base string

	mu     sync.Mutex
	errors []string // uncaught exceptions and console errors
}

// harness records, for each client (subs[name]), the messages and the
// events (connect, disconnect, error <code>), and every page error.
const harness = `(() => {
	window.pageErrors = [];
	window.addEventListener('error', (e) => pageErrors.push('onerror: ' + (e.error && e.error.stack || e.message)));
	window.addEventListener('unhandledrejection', (e) => pageErrors.push('unhandledrejection: ' + e.reason));
	window.subs = {};
	// listen starts a client on url from the message ID start, over
	// transport. WebSocket and EventSource take it as the id option, which
	// they send as ?last_event_id=. Long-poll sends the id option as a
	// request header Etag, which no relay reads: it takes the position as
	// If-Modified-Since and If-None-Match, which its transportSetup event
	// may set (it keeps them between polls and across stop()/start()).
	window.listen = (name, url, transport, start) => {
		const sub = new NchanSubscriber(url, transport === 'longpoll' ? {subscriber: transport} : {subscriber: transport, id: start});
		if (transport === 'longpoll') {
			const colon = start.indexOf(':');
			sub.on('transportSetup', (o) => {
				if (!o.headers['If-Modified-Since']) {
					o.headers['If-Modified-Since'] = new Date(1000 * Number(start.slice(0, colon))).toUTCString();
					o.headers['If-None-Match'] = start.slice(colon + 1);
				}
			});
		}
		const rec = {sub, messages: [], events: []};
		sub.on('message', (data, meta) => rec.messages.push({id: meta.id || '', data}));
		sub.on('connect', () => rec.events.push('connect'));
		sub.on('disconnect', () => rec.events.push('disconnect'));
		sub.on('error', (code) => rec.events.push('error ' + (code && typeof code === 'object' ? code.type : code)));
		subs[name] = rec;
		sub.start();
		return '';
	};
	return '';
})()`

// openNchanPage opens the page and loads src, NchanSubscriber.js, into it.
func openNchanPage(t *testing.T, s *thirdPartySite, src string) *nchanPage {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	p := &nchanPage{t: t, ctx: ctx, base: s.Base}
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			// Network errors of refused connections are the browser's log
			// (Source "network"): expected during cuts and after sign-out.
			if m.IsException() || (m.Type == chromedp.ConsoleError && m.Source == "") {
				p.mu.Lock()
				p.errors = append(p.errors, m.String())
				p.mu.Unlock()
			}
		}
	}()
	// Any document of the site's origin will do: the example's 404.
	p.do("open the page", chromedp.Navigate(s.Base+"/nchan-subscriber"))
	p.do("load NchanSubscriber.js", chromedp.Evaluate[chromedp.Void](src+"\n;undefined"))
	p.eval(harness)
	if got := p.eval(`typeof NchanSubscriber`); got != "function" {
		t.Fatalf("NchanSubscriber in the page: %s", got)
	}
	return p
}

// signIn signs user in from Go and puts the session cookie into the page's
// browser context, as the sign-in form would.
func (p *nchanPage) signIn(s *thirdPartySite, user string) *account {
	p.t.Helper()
	a := signIn(p.t, s.URL, user)
	c := a.cookie()
	p.do("set the session cookie", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, cdpnetwork.SetCookie, cdpnetwork.SetCookieParams{
			Name: c.Name, Value: c.Value, URL: p.base + "/", Path: "/", HTTPOnly: new(true), SameSite: cdpnetwork.CookieSameSiteLax,
		})
		return err
	}))
	return a
}

// listen starts a client named name on the subscription's url, from its
// cursor.
func (p *nchanPage) listen(name string, sub subscription, transport string) {
	p.t.Helper()
	p.eval(fmt.Sprintf(`listen(%s, %s, %s, %s)`, jsString(name), jsString(sub.URL), jsString(transport), jsString(sub.Cursor)))
}

// call calls the client's method (stop, start).
func (p *nchanPage) call(name, method string) {
	p.t.Helper()
	p.eval(fmt.Sprintf(`(subs[%s].sub.%s(), '')`, jsString(name), method))
}

// count returns how many times the client reported the event.
func (p *nchanPage) count(name, event string) int {
	p.t.Helper()
	var n int
	fmt.Sscan(p.eval(fmt.Sprintf(`String(subs[%s].events.filter((e) => e === %s).length)`, jsString(name), jsString(event))), &n)
	return n
}

// waitCount waits until the client has reported the event n times.
func (p *nchanPage) waitCount(name, event string, n int) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("%s to report %s %d times", name, event, n),
		fmt.Sprintf(`subs[%s].events.filter((e) => e === %s).length >= %d`, jsString(name), jsString(event), n))
}

// messages returns what the client received.
func (p *nchanPage) messages(name string) []received {
	p.t.Helper()
	got, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]received](fmt.Sprintf(`subs[%s].messages`, jsString(name))))
	if err != nil {
		p.t.Fatalf("reading %s's messages: %v", name, err)
	}
	return got
}

// waitMessages waits until the client has received len(want) messages, and
// checks them.
func (p *nchanPage) waitMessages(name string, want ...string) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("%s to receive %d messages", name, len(want)),
		fmt.Sprintf(`subs[%s].messages.length >= %d`, jsString(name), len(want)))
	checkMessages(p.t, "NchanSubscriber "+name, p.messages(name), want)
}

// noErrors fails the test if the page had an error.
func (p *nchanPage) noErrors() {
	p.t.Helper()
	errs := p.eval(`pageErrors.join('\n')`)
	p.mu.Lock()
	defer p.mu.Unlock()
	if errs != "" || len(p.errors) > 0 {
		p.t.Errorf("page errors:\n%s\n%s", errs, strings.Join(p.errors, "\n"))
	}
}

func (p *nchanPage) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	(&page{t: p.t, name: "NchanSubscriber's page", ctx: p.ctx}).do(what, actions...)
}

func (p *nchanPage) eval(js string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("evaluating %.80q: %v", js, err)
	}
	return s
}

// waitJS waits until the JavaScript expression cond is truthy in the page,
// for up to waitTimeout. On timeout it fails the test with what every client
// received and reported, and the page errors.
func (p *nchanPage) waitJS(what, cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(waitTimeout)))
	if err == nil {
		return
	}
	state, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify({subs: Object.fromEntries(Object.entries(subs).map(
		([k, v]) => [k, {messages: v.messages, events: v.events}])), pageErrors})`))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.t.Fatalf("waiting for %s: %v\nclients and page errors: %s\nconsole: %q", what, err, state, p.errors)
}
