package nchan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// placeholder marks where the channel ID goes in a publisher URL template.
const placeholder = "{channel}"

// Defaults for the zero values of Options.
const (
	defaultMaxRetryWait = 500 * time.Millisecond
	defaultMaxRetryTime = 10 * time.Second
	defaultExistsTTL    = time.Second
)

// Options configures a [Client]. The zero value is ready to use.
type Options struct {
	// HTTPClient, if set, sends the requests through net/http. Its
	// CheckRedirect is replaced (in a copy) so that a redirect is returned
	// as an error rather than followed. The retry rules are the same.
	//
	// Nil means the Client's own transport, for http:// and https:// URLs
	// alike: HTTP/1.1 written and parsed by github.com/valyala/fasthttp over
	// a pool of up to 128 idle keep-alive connections to the publisher
	// (enough for 128 concurrent calls without reconnecting), each closed
	// when found idle for 60 s or more (below nginx's keepalive_timeout of
	// 75 s). It uses no proxy, asks for no compression, dials with a 5 s
	// timeout, verifies https servers against the system's roots, sends user
	// info in the URL as Basic authentication, and bounds each call by its
	// context's deadline and cancellation. It starts no goroutine and
	// allocates little: 3 allocations per publish against net/http's 69,
	// and less than half the time per publish from 16 or 64 goroutines
	// (BenchmarkPublish). Redirects are returned, not followed.
	HTTPClient *http.Client

	// Logger receives a debug record for each retry and a warning when
	// the server behaves unlike both known ones. Nil means slog.Default().
	Logger *slog.Logger

	// MaxRetryWait caps the wait between two attempts, which starts at
	// 10 ms and doubles. Zero means 500 ms.
	MaxRetryWait time.Duration

	// MaxRetryTime bounds how long a call keeps retrying 503 answers and
	// connection errors when its context allows longer (or has no
	// deadline). Zero means 10 s; negative means no retry at all.
	MaxRetryTime time.Duration

	// ExistsTTL is how long a channel that this Client found open (by
	// Open, Info, or the check in Publish) is trusted to still be open, so
	// that Publish sends only its POST. Zero means 1 s; negative means Publish checks with a GET every time. See "Publishing
	// only to open channels" in the package documentation.
	ExistsTTL time.Duration
}

// Client publishes to an Nchan (or push module 0.712) publisher endpoint. It
// implements [relay.Relay] and is safe for concurrent use; make one per
// endpoint and share it, so that connections and what it knows about
// channels are shared too.
type Client struct {
	prefix, suffix string // the template around {channel}
	inQuery        bool   // {channel} is in the query: QueryEscape, else PathEscape

	hc           *http.Client // Options.HTTPClient (a copy), or nil
	tr           *transport   // nil: hc sends the requests
	targetPrefix string       // prefix without scheme and authority, for tr
	log          *slog.Logger
	maxRetryWait time.Duration
	maxRetryTime time.Duration
	existsTTL    time.Duration

	reg   registry
	stats counters
	// refusesEmpty: the server is the push module 0.712, which answers an
	// empty POST with 500.
	refusesEmpty atomic.Bool
}

// New returns a Client for the publisher URL template publisherURL: an
// absolute http or https URL that contains "{channel}" exactly once, in the
// path or the query, such as "http://127.0.0.1/pub/{channel}" (Nchan,
// `nchan_channel_id $1`) or "http://127.0.0.1/publish?channel={channel}"
// (push module, or Nchan with `nchan_channel_id $arg_channel`).
func New(publisherURL string, opts Options) (*Client, error) {
	prefix, suffix, inQuery, err := parseTemplate(publisherURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		prefix:       prefix,
		suffix:       suffix,
		inQuery:      inQuery,
		log:          opts.Logger,
		maxRetryWait: opts.MaxRetryWait,
		maxRetryTime: opts.MaxRetryTime,
		existsTTL:    opts.ExistsTTL,
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.maxRetryWait <= 0 {
		c.maxRetryWait = defaultMaxRetryWait
	}
	if c.maxRetryTime == 0 {
		c.maxRetryTime = defaultMaxRetryTime
	}
	if c.existsTTL == 0 {
		c.existsTTL = defaultExistsTTL
	}
	if opts.HTTPClient != nil {
		hc := *opts.HTTPClient
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		c.hc = &hc
	} else {
		u, _ := url.Parse(prefix + "x" + suffix) // parsed by parseTemplate
		c.tr = newTransport(u)
		rest := prefix[len(u.Scheme)+len("://"):]
		c.targetPrefix = rest[strings.IndexAny(rest, "/?"):]
		if c.targetPrefix[0] == '?' {
			c.targetPrefix = "/" + c.targetPrefix
		}
	}
	return c, nil
}

// CloseIdleConnections closes the client's idle keep-alive connections to
// the server, for example before the application exits or nginx is stopped
// gracefully (nginx waits for open connections).
func (c *Client) CloseIdleConnections() {
	if c.tr != nil {
		c.tr.closeIdle()
	}
	if c.hc != nil {
		c.hc.CloseIdleConnections()
	}
}

func parseTemplate(tmpl string) (prefix, suffix string, inQuery bool, err error) {
	bad := func(why string) error {
		return fmt.Errorf("nchan: publisher URL %q: %s", tmpl, why)
	}
	if n := strings.Count(tmpl, placeholder); n != 1 {
		return "", "", false, bad(fmt.Sprintf("must contain %s exactly once, not %d times", placeholder, n))
	}
	prefix, suffix, _ = strings.Cut(tmpl, placeholder)
	if strings.Contains(tmpl, "#") {
		return "", "", false, bad("must not have a fragment")
	}
	u, err := url.Parse(prefix + "x" + suffix)
	if err != nil {
		return "", "", false, bad(err.Error())
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", "", false, bad("must be an absolute http or https URL")
	}
	// The placeholder must come after the authority (scheme://host:port).
	rest := prefix[len(u.Scheme)+len("://"):]
	if !strings.ContainsAny(rest, "/?") {
		return "", "", false, bad(placeholder + " must be in the path or the query")
	}
	// The request target is escaped by construction: the template is
	// written again from its parsed parts, its path as net/http escapes it
	// and its query with what a query may not hold escaped, around a marker
	// that needs no escaping, where the channel goes.
	if strings.Contains(tmpl, channelMarker) {
		return "", "", false, bad("must not contain " + channelMarker)
	}
	u, err = url.Parse(prefix + channelMarker + suffix)
	if err != nil {
		return "", "", false, bad(err.Error())
	}
	canon := u.Scheme + "://"
	if u.User != nil {
		canon += u.User.String() + "@"
	}
	canon += u.Host + u.EscapedPath()
	if u.RawQuery != "" || u.ForceQuery {
		canon += "?" + escapeQuery(u.RawQuery)
	}
	prefix, suffix, _ = strings.Cut(canon, channelMarker)
	return prefix, suffix, strings.Contains(prefix, "?"), nil
}

// channelMarker stands for the channel while a template is escaped: letters
// only, which neither a path nor a query escapes.
const channelMarker = "sessionpushChannelMarker"

// escapeQuery percent-encodes the bytes that a URL query may not hold (RFC
// 3986: anything but unreserved and sub-delimiter characters, ":", "@", "/",
// "?" and existing %XX escapes), leaving the rest as written.
func escapeQuery(q string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("-._~!$&'()*+,;=:@/?", c) >= 0:
			b.WriteByte(c)
		case c == '%' && i+2 < len(q) && ishex(q[i+1]) && ishex(q[i+2]):
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// url builds the publisher URL of a validated channel ID. Validation leaves
// nothing to escape; escaping is done anyway, for the position of the ID.
func (c *Client) url(channel string) string {
	if c.inQuery {
		return c.prefix + url.QueryEscape(channel) + c.suffix
	}
	return c.prefix + url.PathEscape(channel) + c.suffix
}

// target is the request target (path and query) of a channel's publisher
// URL, for the transport, in three pieces.
func (c *Client) target(channel string) [3]string {
	if c.inQuery {
		return [3]string{c.targetPrefix, url.QueryEscape(channel), c.suffix}
	}
	return [3]string{c.targetPrefix, url.PathEscape(channel), c.suffix}
}

func validate(op, channel string) error {
	if err := relay.ValidateID(channel); err != nil {
		return &Error{Op: op, Channel: channel, Err: err}
	}
	return nil
}

func (c *Client) markOpen(channel string) {
	if c.existsTTL > 0 {
		c.reg.set(channel, true, time.Now().Add(c.existsTTL))
	}
}

// Open creates the channel, or keeps it if it exists, and returns a cursor
// from which a listener receives every message published after Open
// returns, and nothing else.
//
// It first asks for the channel's info. If the channel exists, the cursor
// is its last message ID (Nchan; [relay.NoCursor] if it has none), or, on
// the push module, which does not report IDs, [relay.NoCursor] when no
// message is buffered and "" (unknown) otherwise. If it does not exist
// (404), Open creates it with an empty PUT: the push module 0.712 answers
// 200 and creates an empty channel (cursor [relay.NoCursor]); Nchan answers
// 202 (201) and publishes an empty message, whose ID, from the answer's info,
// is the cursor, so that a listener resuming from it never sees that
// message. A channel that Nchan's memory store still shows although it was
// deleted (see "Deleted channels" in the package documentation) is created
// again the same way.
//
// When Nchan's shared memory is full it refuses the PUT with 507 (or 500),
// and Open returns an error wrapping [relay.ErrRelayFull]; it succeeds again once
// messages expire and free memory.
//
// Concurrent Opens of one channel on one Client share one round of
// requests and return the same cursor.
func (c *Client) Open(ctx context.Context, channel string) (_ string, err error) {
	defer c.stats.failed(&err)
	if err := validate("open", channel); err != nil {
		return "", err
	}
	for {
		call, leader := c.reg.joinOpen(channel)
		if leader {
			call.cursor, call.err = c.open(ctx, channel)
			c.reg.finishOpen(channel, call)
			return call.cursor, call.err
		}
		select {
		case <-call.done:
		case <-ctx.Done():
			return "", &Error{Op: "open", Channel: channel, Err: ctx.Err()}
		}
		// If the leader's context ended but ours did not, try again.
		if call.err != nil && ctx.Err() == nil &&
			(errors.Is(call.err, context.Canceled) || errors.Is(call.err, context.DeadlineExceeded)) {
			continue
		}
		return call.cursor, call.err
	}
}

func (c *Client) open(ctx context.Context, channel string) (string, error) {
	if _, closed := c.reg.state(channel, time.Now()); !closed {
		res, err := c.do(ctx, request{op: "open", channel: channel, method: http.MethodGet})
		if err != nil {
			return "", err
		}
		switch res.status {
		case http.StatusOK:
			ci, err := parseInfo(res.body)
			if err != nil {
				return "", &Error{Op: "open", Channel: channel, Status: res.status, Err: err}
			}
			if !ci.dying() {
				c.markOpen(channel)
				return ci.cursor(), nil
			}
		case http.StatusNotFound:
		default:
			return "", statusError("open", channel, res.status)
		}
	}

	res, err := c.do(ctx, request{op: "open", channel: channel, method: http.MethodPut})
	if err != nil {
		return "", err
	}
	var cursor string
	switch res.status {
	case http.StatusOK: // push module 0.712: created, no message
		c.refusesEmpty.Store(true)
		ci, err := parseInfo(res.body)
		if err != nil {
			return "", &Error{Op: "open", Channel: channel, Status: res.status, Err: err}
		}
		cursor = ci.cursor()
	case http.StatusCreated, http.StatusAccepted: // Nchan: an empty message was published
		ci, err := parseInfo(res.body)
		if err != nil {
			return "", &Error{Op: "open", Channel: channel, Status: res.status, Err: err}
		}
		if !ci.hasLastID {
			// push module 0.731 publishes on PUT without reporting IDs.
			c.log.LogAttrs(ctx, slog.LevelWarn, "nchan: PUT published an empty message whose ID the server does not report; listeners will see it",
				slog.String("channel", channel))
		}
		cursor = ci.lastID
	default:
		return "", storeError("open", channel, res.status)
	}
	c.reg.forget(channel)
	c.markOpen(channel)
	return cursor, nil
}

// Publish posts m to an open channel: the body as is, m.ContentType as
// Content-Type, and m.Event as X-EventSource-Event. The receipt comes from
// the info in the answer (201: a listener was waiting; 202: none was); its
// ID is empty on the push module, which does not report message IDs.
//
// A POST would create a missing channel on both servers, so Publish sends
// one only to a channel it knows open; otherwise it first asks for the
// channel's info and returns an error wrapping [relay.ErrChannelNotFound] if
// there is none (see "Publishing only to open channels" in the package
// documentation). Too large a body (413) gives [relay.ErrMessageTooLarge];
// Nchan out of shared memory (507, or 500 when an allocation failed) gives
// [relay.ErrRelayFull];
// an empty body on the push module 0.712 gives [ErrEmptyMessage].
func (c *Client) Publish(ctx context.Context, channel string, m relay.Message) (_ relay.Receipt, err error) {
	defer c.stats.failed(&err)
	if err := validate("publish", channel); err != nil {
		return relay.Receipt{}, err
	}
	for _, h := range [...]struct{ name, value string }{{"content type", m.ContentType}, {"event name", m.Event}} {
		if !validHeaderValue(h.value) {
			return relay.Receipt{}, &Error{Op: "publish", Channel: channel,
				Err: fmt.Errorf("%w: %s %q contains a control character", errBadHeader, h.name, clip(h.value))}
		}
	}
	open, closed := c.reg.state(channel, time.Now())
	if closed {
		return relay.Receipt{}, notFound("publish", channel, 0)
	}
	if !open {
		if _, err := c.check(ctx, "publish", channel); err != nil {
			return relay.Receipt{}, err
		}
	}
	if len(m.Body) == 0 && c.refusesEmpty.Load() {
		return relay.Receipt{}, &Error{Op: "publish", Channel: channel, Err: ErrEmptyMessage}
	}

	res, err := c.do(ctx, request{op: "publish", channel: channel, method: http.MethodPost,
		body: m.Body, contentType: m.ContentType, event: m.Event})
	if err != nil {
		return relay.Receipt{}, err
	}
	switch res.status {
	case http.StatusCreated, http.StatusAccepted:
		ci, err := parseInfo(res.body)
		if err != nil {
			// Published all the same: reporting an error would invite a
			// second publish.
			c.log.LogAttrs(ctx, slog.LevelWarn, "nchan: publish answered without channel info",
				slog.String("channel", channel), slog.Int("status", res.status), slog.Any("error", err))
			return relay.Receipt{}, nil
		}
		return ci.receipt(), nil
	case http.StatusRequestEntityTooLarge:
		return relay.Receipt{}, &Error{Op: "publish", Channel: channel, Status: res.status, Err: relay.ErrMessageTooLarge}
	case http.StatusNotFound:
		c.reg.forget(channel)
		return relay.Receipt{}, notFound("publish", channel, res.status)
	case http.StatusInternalServerError:
		if len(m.Body) == 0 {
			c.refusesEmpty.Store(true)
			return relay.Receipt{}, &Error{Op: "publish", Channel: channel, Status: res.status, Err: ErrEmptyMessage}
		}
	}
	return relay.Receipt{}, storeError("publish", channel, res.status)
}

// check asks for the info of a channel that must be open: 404, or a
// channel Nchan shows although it is gone, is ErrChannelNotFound.
func (c *Client) check(ctx context.Context, op, channel string) (channelInfo, error) {
	res, err := c.do(ctx, request{op: op, channel: channel, method: http.MethodGet})
	if err != nil {
		return channelInfo{}, err
	}
	switch res.status {
	case http.StatusOK:
		ci, err := parseInfo(res.body)
		if err != nil {
			return channelInfo{}, &Error{Op: op, Channel: channel, Status: res.status, Err: err}
		}
		if ci.dying() {
			return channelInfo{}, notFound(op, channel, res.status)
		}
		c.markOpen(channel)
		return ci, nil
	case http.StatusNotFound:
		c.reg.forget(channel)
		return channelInfo{}, notFound(op, channel, res.status)
	}
	return channelInfo{}, statusError(op, channel, res.status)
}

// validHeaderValue accepts what net/http sends: no control bytes but tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < ' ' && b != '\t' || b == 0x7f {
			return false
		}
	}
	return true
}

// Info reports on an open channel. Its LastMessageID is empty on the push
// module, which does not report it. A missing channel (404) and a channel
// that Nchan shows although it is gone give an error wrapping
// [relay.ErrChannelNotFound].
func (c *Client) Info(ctx context.Context, channel string) (_ relay.Info, err error) {
	defer c.stats.failed(&err)
	if err := validate("info", channel); err != nil {
		return relay.Info{}, err
	}
	if _, closed := c.reg.state(channel, time.Now()); closed {
		return relay.Info{}, notFound("info", channel, 0)
	}
	ci, err := c.check(ctx, "info", channel)
	if err != nil {
		return relay.Info{}, err
	}
	return ci.relayInfo(), nil
}

// Close deletes the channel (DELETE), which ends its listeners: long-polls
// get 410, EventSource streams end, WebSockets close with 1001. A missing
// channel (404), or one that was already deleted although Nchan still
// shows it, gives an error wrapping [relay.ErrChannelNotFound]; the DELETE
// is sent all the same, so that listeners that came back are ended.
func (c *Client) Close(ctx context.Context, channel string) (err error) {
	defer c.stats.failed(&err)
	if err := validate("close", channel); err != nil {
		return err
	}
	_, wasClosed := c.reg.state(channel, time.Now())
	res, err := c.do(ctx, request{op: "close", channel: channel, method: http.MethodDelete})
	if err != nil {
		return err
	}
	switch res.status {
	case http.StatusOK:
		c.reg.set(channel, false, time.Now().Add(closedGrace))
		// The body is the info from before the DELETE.
		if ci, err := parseInfo(res.body); wasClosed || err == nil && ci.dying() {
			return notFound("close", channel, res.status)
		}
		return nil
	case http.StatusNotFound:
		if res.maybeDone { // an earlier attempt that lost its answer deleted it
			c.reg.set(channel, false, time.Now().Add(closedGrace))
			return nil
		}
		c.reg.forget(channel)
		return notFound("close", channel, res.status)
	}
	return statusError("close", channel, res.status)
}
