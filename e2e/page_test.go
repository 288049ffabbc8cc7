package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// waitTimeout bounds every wait for the page. The longest one is the
// reconnection after a restart, which the client's backoff (at most 15 s,
// growing from 0.5 s) stretches to a few seconds.
const waitTimeout = 25 * time.Second

// page is one browser tab showing the example.
type page struct {
	t    *testing.T
	name string // for messages and the screenshot
	ctx  context.Context
}

// newPerson opens a tab in a new browser context: a separate cookie jar, as
// another person's browser.
func newPerson(t *testing.T, name string) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	return openTab(t, name, ctx)
}

// newTab opens another tab of the same person (the same browser context,
// so the same cookies).
func (p *page) newTab(name string) *page {
	p.t.Helper()
	ctx, cancel := chromedp.NewContext(p.ctx)
	p.t.Cleanup(cancel)
	return openTab(p.t, name, ctx)
}

func openTab(t *testing.T, name string, ctx context.Context) *page {
	t.Helper()
	if err := chromedp.Do(ctx); err != nil { // opens the tab, for the life of ctx
		t.Fatalf("%s: opening a tab: %v", name, err)
	}
	return &page{t: t, name: name, ctx: ctx}
}

// do runs the actions within waitTimeout, failing the test on error.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.fail("%s: %v", what, err)
	}
}

// open loads url, with ?transports=<transport> when transport is not
// empty; the page keeps that choice for the tab.
func (p *page) open(url, transport string) {
	p.t.Helper()
	if transport != "" {
		url += "/?transports=" + transport
	}
	p.do("open "+url, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("h1")))
}

// signIn types name into the sign-in form and clicks "Sign in".
func (p *page) signIn(name string) {
	p.t.Helper()
	p.do("sign in as "+name,
		chromedp.WaitVisible(chromedp.ID("name")),
		chromedp.SendKeys(chromedp.ID("name"), name),
		chromedp.Click(chromedp.CSS(`form[action="/login"] button`)),
		chromedp.WaitVisible(chromedp.ID("user")))
	p.waitText("user", name)
}

// signOut clicks "Sign out" and waits for the sign-in form.
func (p *page) signOut() {
	p.t.Helper()
	p.do("sign out",
		chromedp.Click(chromedp.CSS(`form[action="/logout"] button`)),
		chromedp.WaitVisible(chromedp.ID("name")))
}

// push types text as the message and clicks "Push to me".
func (p *page) push(text string) { p.t.Helper(); p.send("push", text) }

// broadcast types text as the message and clicks "Broadcast".
func (p *page) broadcast(text string) { p.t.Helper(); p.send("broadcast", text) }

func (p *page) send(button, text string) {
	p.t.Helper()
	p.do(button+" "+text,
		chromedp.Evaluate[chromedp.Void](`document.getElementById('text').select()`), // as a triple click does
		chromedp.SendKeys(chromedp.ID("text"), text),                                 // typing replaces the selection
		chromedp.Click(chromedp.ID(button)))
}

// listening waits until the state line says the page listens over
// transport, and returns the channel it names.
func (p *page) listening(transport string) string {
	p.t.Helper()
	prefix := "Listening (" + transport + ") on channel "
	p.waitJS("the state line to start with "+prefix, `document.getElementById('state').textContent.startsWith(`+jsString(prefix)+`)`)
	return p.stateChannels()[0]
}

// listeningToBroadcasts waits until the state line says the page listens
// over transport to its channel and to the broadcast channel, and returns
// both.
func (p *page) listeningToBroadcasts(transport string) (channel, broadcast string) {
	p.t.Helper()
	prefix := "Listening (" + transport + ") on channel "
	p.waitJS("the state line to start with "+prefix+" and name the broadcast channel",
		`((s) => s.startsWith(`+jsString(prefix)+`) && s.includes(' Broadcasts on channel '))(document.getElementById('state').textContent)`)
	c := p.stateChannels()
	return c[0], c[1]
}

// stateChannels returns the channel and the broadcast channel (or "") that
// the state line names.
func (p *page) stateChannels() []string {
	p.t.Helper()
	m := stateLine.FindStringSubmatch(p.text("state"))
	if m == nil {
		p.fail("state line %q: no channel ID in it", p.text("state"))
	}
	return m[1:]
}

var stateLine = regexp.MustCompile(`^Listening \(\w+\) on channel ([0-9a-f-]{36})\.(?: Broadcasts on channel ([0-9a-f-]{36})\.)?$`)

// waitText waits until the element with that id shows exactly want.
func (p *page) waitText(id, want string) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("#%s to show %q", id, want),
		`document.getElementById(`+jsString(id)+`)?.textContent === `+jsString(want))
}

// waitPrefix waits until the element with that id shows text starting with
// prefix.
func (p *page) waitPrefix(id, prefix string) {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("#%s to start with %q", id, prefix),
		`(document.getElementById(`+jsString(id)+`)?.textContent || '').startsWith(`+jsString(prefix)+`)`)
}

// waitMessages waits until the page lists n messages, and returns them.
func (p *page) waitMessages(n int) []message {
	p.t.Helper()
	p.waitJS(fmt.Sprintf("%d messages", n), fmt.Sprintf(`document.querySelectorAll('#messages li').length >= %d`, n))
	return p.messages()
}

// expectMessages waits until the page lists len(want) messages and checks
// that they are want, oldest first, each once.
func (p *page) expectMessages(want ...string) {
	p.t.Helper()
	got := p.waitMessages(len(want))
	texts := make([]string, len(got))
	for i, m := range got {
		texts[i] = m.String()
	}
	if strings.Join(texts, "\n") != strings.Join(want, "\n") {
		p.fail("messages:\n\t%s\nwant:\n\t%s", strings.Join(texts, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// waitJS waits until the JavaScript expression cond is truthy in the page,
// checking every 50 ms, for up to waitTimeout.
func (p *page) waitJS(what, cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(waitTimeout)))
	if err != nil {
		p.fail("waiting for %s: %v", what, err)
	}
}

// message is an entry of the page's list: the JSON that the page posted
// (kind, from, text), and what the page shows under it.
type message struct {
	Kind string `json:"kind"`
	From string `json:"from"`
	Text string `json:"text"`
	Meta string `json:"-"` // "id <id> · <event> · received <time>"
}

func (m message) String() string { return m.Kind + " from " + m.From + ": " + m.Text }

// messages returns the page's list, oldest first (the page shows the
// newest on top).
func (p *page) messages() []message {
	p.t.Helper()
	type item struct{ Body, Meta string }
	items, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]item](`[...document.querySelectorAll('#messages li')].reverse().map((li) => ({
		Body: li.querySelector('code').textContent, Meta: li.querySelector('small').textContent}))`))
	if err != nil {
		p.fail("reading the messages: %v", err)
	}
	out := make([]message, len(items))
	for i, it := range items {
		if err := json.Unmarshal([]byte(it.Body), &out[i]); err != nil {
			p.fail("message %q: %v", it.Body, err)
		}
		out[i].Meta = it.Meta
	}
	return out
}

// text returns the text of the element with that id, or "" if none.
func (p *page) text(id string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.getElementById(`+jsString(id)+`)?.textContent ?? ''`))
	if err != nil {
		p.fail("reading #%s: %v", id, err)
	}
	return s
}

// screenshot saves the whole page as screenshots/<test name>[-suffix].png.
func (p *page) screenshot(suffix string) string {
	p.t.Helper()
	buf, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		p.t.Errorf("%s: screenshot: %v", p.name, err)
		return ""
	}
	name := regexp.MustCompile(`[^A-Za-z0-9_-]+`).ReplaceAllString(p.t.Name(), "_")
	if suffix != "" {
		name += "-" + suffix
	}
	path := filepath.Join("screenshots", name+".png")
	if err := os.MkdirAll("screenshots", 0o755); err != nil {
		p.t.Errorf("screenshot: %v", err)
		return ""
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		p.t.Errorf("screenshot: %v", err)
		return ""
	}
	return path
}

// fail fails the test with what the page shows, and saves a screenshot.
func (p *page) fail(format string, args ...any) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	shown, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
	shot := (&page{t: p.t, name: p.name, ctx: ctx}).screenshot(p.name + "-failed")
	p.t.Fatalf("%s: %s\n--- the page shows:\n%s\n--- screenshot: %s", p.name, fmt.Sprintf(format, args...), shown, shot)
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// eval evaluates the JavaScript expression js, a string, in the page.
func (p *page) eval(js string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		p.fail("evaluating %.60q: %v", js, err)
	}
	return s
}
