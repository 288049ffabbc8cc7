// Package sessionpushtest provides a recording relay and helpers for testing
// code that pushes with sessionpush, without any server, in the spirit of
// net/http/httptest.
//
//	kit, _ := sessionpushtest.NewKit(sessionpush.Config{})
//	r, channel, _ := kit.SignIn(httptest.NewRequest("POST", "/export", nil), "alice")
//	kit.Manager.Middleware(myHandler).ServeHTTP(httptest.NewRecorder(), r)
//	msgs := kit.Relay.Messages(channel) // what myHandler pushed to alice
package sessionpushtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"

	"github.com/gorilla/securecookie"
	"github.com/gorilla/sessions"

	"github.com/sessionpush/sessionpush"
	"github.com/sessionpush/sessionpush/relay"
)

// Published is one message that a [Relay] accepted.
type Published struct {
	Channel string
	Message relay.Message
	ID      string
}

// Relay is a relay.Relay that keeps channels in memory and records every
// message published. It delivers nothing to listeners. It is safe for
// concurrent use; its zero value is ready.
type Relay struct {
	mu        sync.Mutex
	open      map[string][]relay.Message
	published []Published
	seq       int
}

var _ relay.Relay = (*Relay)(nil)

// NewRelay returns an empty recording relay.
func NewRelay() *Relay { return &Relay{} }

// Open implements relay.Relay.
func (r *Relay) Open(_ context.Context, channel string) (string, error) {
	if err := relay.ValidateID(channel); err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open == nil {
		r.open = map[string][]relay.Message{}
	}
	if _, ok := r.open[channel]; !ok {
		r.open[channel] = []relay.Message{}
	}
	return r.cursor(), nil
}

// cursor returns the ID of the newest message, or relay.NoCursor.
func (r *Relay) cursor() string {
	if r.seq == 0 {
		return relay.NoCursor
	}
	return "0:" + strconv.Itoa(r.seq)
}

// Publish implements relay.Relay: it records m if channel is open.
func (r *Relay) Publish(_ context.Context, channel string, m relay.Message) (relay.Receipt, error) {
	if err := relay.ValidateID(channel); err != nil {
		return relay.Receipt{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	msgs, ok := r.open[channel]
	if !ok {
		return relay.Receipt{}, fmt.Errorf("sessionpushtest: publish %s: %w", channel, relay.ErrChannelNotFound)
	}
	m.Body = append([]byte(nil), m.Body...)
	r.seq++
	r.open[channel] = append(msgs, m)
	r.published = append(r.published, Published{Channel: channel, Message: m, ID: r.cursor()})
	return relay.Receipt{ID: r.cursor(), Queued: len(msgs) + 1}, nil
}

// Info implements relay.Relay.
func (r *Relay) Info(_ context.Context, channel string) (relay.Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	msgs, ok := r.open[channel]
	if !ok {
		return relay.Info{}, fmt.Errorf("sessionpushtest: info %s: %w", channel, relay.ErrChannelNotFound)
	}
	return relay.Info{Messages: len(msgs), LastMessageID: r.cursor(), SinceRequest: -1}, nil
}

// Close implements relay.Relay.
func (r *Relay) Close(_ context.Context, channel string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.open[channel]; !ok {
		return fmt.Errorf("sessionpushtest: close %s: %w", channel, relay.ErrChannelNotFound)
	}
	delete(r.open, channel)
	return nil
}

// IsOpen reports whether channel is open.
func (r *Relay) IsOpen(channel string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.open[channel]
	return ok
}

// Messages returns the messages published to channel while it was open
// the last time, oldest first.
func (r *Relay) Messages(channel string) []relay.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]relay.Message(nil), r.open[channel]...)
}

// Published returns every message accepted so far, oldest first.
func (r *Relay) Published() []Published {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Published(nil), r.published...)
}

// DecodeJSON decodes the JSON body of channel's newest message into v.
func (r *Relay) DecodeJSON(channel string, v any) error {
	msgs := r.Messages(channel)
	if len(msgs) == 0 {
		return fmt.Errorf("sessionpushtest: no message on channel %s", channel)
	}
	return json.Unmarshal(msgs[len(msgs)-1].Body, v)
}

// Kit is a Manager on a recording Relay with a cookie session store, and the
// means to sign users in.
type Kit struct {
	Manager  *sessionpush.Manager
	Relay    *Relay
	Sessions *sessions.CookieStore
	name     string
	userKey  string
}

// NewKit returns a Kit. In cfg, Sessions and Relay are replaced by the
// kit's own; every other field is used as given.
func NewKit(cfg sessionpush.Config) (*Kit, error) {
	k := &Kit{
		Relay:    NewRelay(),
		Sessions: sessions.NewCookieStore(securecookie.GenerateRandomKey(32)),
		name:     cfg.SessionName,
		userKey:  cfg.UserKey,
	}
	k.Sessions.Options.HttpOnly = true
	k.Sessions.Options.SameSite = http.SameSiteLaxMode
	if k.name == "" {
		k.name = "session" // Config.SessionName's default
	}
	if k.userKey == "" {
		k.userKey = "user" // Config.UserKey's default
	}
	cfg.Sessions, cfg.Relay = k.Sessions, k.Relay
	m, err := sessionpush.New(cfg)
	if err != nil {
		return nil, err
	}
	k.Manager = m
	return k, nil
}

// SignIn returns a copy of r that carries a session cookie of user, whose
// channel SubscribeHandler has opened, and that channel's ID.
func (k *Kit) SignIn(r *http.Request, user string) (*http.Request, string, error) {
	blank := httptest.NewRequest(http.MethodGet, "/", nil)
	s, _ := k.Sessions.New(blank, k.name)
	s.Values[k.userKey] = user
	rec := httptest.NewRecorder()
	if err := s.Save(blank, rec); err != nil {
		return nil, "", fmt.Errorf("sessionpushtest: save session: %w", err)
	}
	sub := httptest.NewRequest(http.MethodPost, "/subscribe", nil)
	sub.Header.Set("Accept", "text/plain")
	addCookies(sub, rec)
	rec2 := httptest.NewRecorder()
	k.Manager.SubscribeHandler().ServeHTTP(rec2, sub)
	if rec2.Code != http.StatusOK {
		return nil, "", fmt.Errorf("sessionpushtest: /subscribe answered %d", rec2.Code)
	}
	out := r.Clone(r.Context())
	out.Header.Del("Cookie")
	addCookies(out, rec2)
	return out, rec2.Body.String(), nil
}

// addCookies adds to r the cookies that rec set.
func addCookies(r *http.Request, rec *httptest.ResponseRecorder) {
	for _, c := range rec.Result().Cookies() {
		r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
}
