package sessionpush

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/gorilla/sessions"
)

// Middleware binds a push channel to every signed-in session and puts it in
// the request context, where [CurrentChannel] finds it.
//
// When a session has a user but no channel for that user, the Middleware
// binds a new random channel ID (a version 4 UUID) and saves it in the
// session with its owner. It looks before the handler runs and again when
// the handler starts its response if the handler saved the session (the
// response sets a cookie), so the response that signs a user in already
// carries the binding, and the requests that follow, however many at once,
// agree on one channel. A change to the session that the handler does not
// save is seen on the next request. When the session's user changes or signs out,
// the old channel is closed and, for a new user, a new one bound. Binding is
// not opening: SubscribeHandler opens the channel.
//
// On other requests the work is one session decode, which the handler's own
// session Get then reuses; nothing touches the network. A cookie that fails
// to decode (tampered, expired, old keys) counts as no session.
//
// The ResponseWriter that next receives implements Unwrap, Flush and Hijack
// over the original one, so [http.NewResponseController] reaches it.
func (m *Manager) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := FromContext(r.Context()); ok {
			next.ServeHTTP(w, r)
			return
		}
		sw := &sessionWriter{ResponseWriter: w, m: m, r: r, s: m.session(r)}
		ch, ok, err := m.syncSession(w, r, sw.s)
		if err != nil {
			m.log.Error("sessionpush: binding a channel to the session", "err", err)
		}
		if ok {
			// The writer doubles as the request's context, so that the
			// channel costs no allocation of its own.
			sw.ctx = chanCtx{Context: r.Context(), ch: ch}
			r = r.WithContext(&sw.ctx)
			sw.r = r
		}
		next.ServeHTTP(sw, r)
		sw.check()
	})
}

// chanCtx is a context that carries a channel, as NewContext makes one.
type chanCtx struct {
	context.Context
	ch Channel
}

func (c *chanCtx) Value(key any) any {
	if key == channelKey {
		return &c.ch
	}
	return c.Context.Value(key)
}

// sessionWriter looks at the session once more when the handler starts its
// response, to bind a channel to a user that the handler signed in (or to
// close the channel of one it signed out).
type sessionWriter struct {
	http.ResponseWriter
	m       *Manager
	r       *http.Request
	s       *sessions.Session // the request's session, as the store's registry holds it
	ctx     chanCtx
	checked bool
}

func (w *sessionWriter) check() {
	if w.checked {
		return
	}
	w.checked = true
	if len(w.ResponseWriter.Header()["Set-Cookie"]) == 0 {
		// The handler saved no session, so it signed nobody in or out:
		// a change it made but did not save waits for the next request.
		return
	}
	s := w.s
	if s == nil {
		s = w.m.session(w.r)
	} else if ch := &w.ctx.ch; ch.ID != "" {
		// The common case: the handler left the user and the binding
		// as they were, already validated.
		if id, owner := boundValues(s); id == ch.ID && owner == ch.User && w.m.isUser(w.r, s, owner) {
			return
		}
	}
	if _, _, err := w.m.syncSession(w.ResponseWriter, w.r, s); err != nil {
		w.m.log.Error("sessionpush: binding a channel to the session", "err", err)
	}
}

func (w *sessionWriter) WriteHeader(code int) {
	w.check()
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Write(b []byte) (int, error) {
	w.check()
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps io.Copy's fast paths of the underlying writer.
func (w *sessionWriter) ReadFrom(src io.Reader) (int64, error) {
	w.check()
	return io.Copy(w.ResponseWriter, src)
}

// Unwrap returns the original ResponseWriter, for http.ResponseController.
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush flushes the original ResponseWriter if it can.
func (w *sessionWriter) Flush() {
	w.check()
	http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack hijacks the original ResponseWriter's connection if it can.
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.check()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// channel returns the request's channel, binding one if the Middleware did
// not run.
func (m *Manager) channel(w http.ResponseWriter, r *http.Request) (*Channel, error) {
	if ch, ok := FromContext(r.Context()); ok {
		return ch, nil
	}
	ch, ok, err := m.sync(w, r)
	if !ok {
		return nil, err
	}
	return &ch, err
}

// session returns r's session, or nil if it cannot be had. A decode error
// leaves a new, empty session: no user.
func (m *Manager) session(r *http.Request) *sessions.Session {
	s, err := m.sessions.Get(r, m.name)
	if err != nil && s == nil {
		m.log.Error("sessionpush: session store failed", "err", err)
	}
	return s
}

// bound returns the channel that r's session holds for its current user,
// without changing anything: nil when nobody is signed in or no channel is
// bound to this user.
func (m *Manager) bound(r *http.Request) *Channel {
	s := m.session(r)
	if s == nil {
		return nil
	}
	id, owner := boundValues(s)
	if !validChannelID(id) || !m.isUser(r, s, owner) {
		return nil
	}
	return &Channel{ID: id, User: owner, m: m}
}

func boundValues(s *sessions.Session) (id, owner string) {
	id, _ = s.Values[SessionKeyChannel].(string)
	owner, _ = s.Values[SessionKeyOwner].(string)
	return id, owner
}

// sync brings the binding of r's session in line with its user and returns
// the channel bound to that user (ok=false when nobody is signed in). It
// saves the session only when the binding changes: a new user gets a new
// channel, and the channel of a user who left the session is closed.
func (m *Manager) sync(w http.ResponseWriter, r *http.Request) (Channel, bool, error) {
	return m.syncSession(w, r, m.session(r))
}

// syncSession is sync on s, r's session as the store returned it.
func (m *Manager) syncSession(w http.ResponseWriter, r *http.Request, s *sessions.Session) (Channel, bool, error) {
	if s == nil {
		return Channel{}, false, nil
	}
	id, owner := boundValues(s)
	if validChannelID(id) && m.isUser(r, s, owner) {
		return Channel{ID: id, User: owner, m: m}, true, nil
	}
	user := m.user(r, s)
	if id == "" && owner == "" && user == "" {
		return Channel{}, false, nil
	}
	cause := causeLogout
	if user != "" {
		cause = causeReplaced
	}
	unbindErr := m.unbind(r.Context(), s, cause)
	var ch Channel
	if user != "" {
		ch = Channel{ID: uuid.NewString(), User: user, m: m}
		s.Values[SessionKeyChannel] = ch.ID
		s.Values[SessionKeyOwner] = user
	}
	if err := m.save(w, r, s); err != nil {
		return Channel{}, false, errors.Join(unbindErr, err)
	}
	return ch, user != "", unbindErr
}

// unbind closes the channel bound to s, if any, for cause, and removes it
// from s, which the caller saves.
func (m *Manager) unbind(ctx context.Context, s *sessions.Session, cause closeCause) error {
	id, _ := boundValues(s)
	delete(s.Values, SessionKeyChannel)
	delete(s.Values, SessionKeyOwner)
	if !validChannelID(id) {
		return nil
	}
	if err := m.closeChannel(ctx, id, cause); err != nil && !errors.Is(err, ErrChannelNotFound) {
		return err
	}
	return nil
}

// rebind replaces the channel bound to r's session by a new one, for when
// the relay lost the old one.
func (m *Manager) rebind(w http.ResponseWriter, r *http.Request, old *Channel) (*Channel, error) {
	s := m.session(r)
	if s == nil {
		return nil, errors.New("sessionpush: session unavailable")
	}
	ch := &Channel{ID: uuid.NewString(), User: old.User, m: m}
	s.Values[SessionKeyChannel] = ch.ID
	s.Values[SessionKeyOwner] = ch.User
	return ch, m.save(w, r, s)
}

// save saves s, replacing a session cookie that the response already sets,
// so that the response carries one, up-to-date, cookie of that name.
func (m *Manager) save(w http.ResponseWriter, r *http.Request, s *sessions.Session) error {
	h := w.Header()
	if lines := h["Set-Cookie"]; len(lines) > 0 {
		kept := lines[:0:0]
		for _, l := range lines {
			if c, err := http.ParseSetCookie(l); err != nil || c.Name != s.Name() {
				kept = append(kept, l)
			}
		}
		h["Set-Cookie"] = kept
	}
	if err := s.Save(r, w); err != nil {
		return fmt.Errorf("sessionpush: save session: %w", err)
	}
	return nil
}

// user tells the signed-in user of s.
func (m *Manager) user(r *http.Request, s *sessions.Session) string {
	if m.userFunc != nil {
		return m.userFunc(r, s)
	}
	switch v := s.Values[m.userKey].(type) {
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float64: // JSON-encoded sessions decode numbers as float64
		if v == float64(int64(v)) {
			return strconv.FormatInt(int64(v), 10)
		}
	}
	return ""
}

// isUser reports whether s's signed-in user is name, a non-empty user ID
// as m.user formats it, without formatting a numeric ID (which would
// allocate on every request).
func (m *Manager) isUser(r *http.Request, s *sessions.Session, name string) bool {
	if name == "" {
		return false
	}
	if m.userFunc != nil {
		return m.userFunc(r, s) == name
	}
	switch v := s.Values[m.userKey].(type) {
	case string:
		return v == name
	case int:
		n, err := strconv.ParseInt(name, 10, 64)
		return err == nil && n == int64(v) && canonicalInt(name)
	case int64:
		n, err := strconv.ParseInt(name, 10, 64)
		return err == nil && n == v && canonicalInt(name)
	case uint64:
		n, err := strconv.ParseUint(name, 10, 64)
		return err == nil && n == v && canonicalInt(name)
	case float64:
		n, err := strconv.ParseInt(name, 10, 64)
		return err == nil && v == float64(int64(v)) && n == int64(v) && canonicalInt(name)
	}
	return m.user(r, s) == name // fmt.Stringer and the rest
}

// canonicalInt reports whether s is an integer as strconv formats one: no
// sign but a leading '-', no leading zeros.
func canonicalInt(s string) bool {
	d := strings.TrimPrefix(s, "-")
	return d != "" && (d == "0" && d == s || d[0] != '0') && s[0] != '+'
}
