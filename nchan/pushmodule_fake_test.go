package nchan

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessionpush/sessionpush/relay"
)

// pushModule is a fake of nginx_http_push_module 0.712, built from what a
// real 0.712 server was observed to answer:
//
//   - publisher /publish?channel=<id>: GET 404 (empty) or 200 + info; PUT
//     creates an empty channel (200 + info, body ignored); POST stores a
//     message (201 if a long-poll was waiting, else 202, + info); an empty
//     POST is a 500 HTML page; DELETE answers 200 with the info from before
//     and the channel is gone at once (404); no channel id: 404 "No channel
//     id provided."; other methods 405.
//   - info is plain text (CRLF, no final newline) unless Accept has "json":
//     then JSON labelled "application/json\x00", as 0.712 echoes the token
//     plus the byte after it. label forces a Content-Type on JSON info.
//   - subscriber /activity?channel=<id>: long-poll walked with
//     If-Modified-Since + If-None-Match (Last-Modified + Etag on each
//     message), 304 on timeout, 410 when the channel is deleted, 403 for a
//     channel that was never created (push_authorized_channels_only on).
//
// Any HEAD fails the test: Nchan never answers one, so the client must never
// send it. The 0.712 bugs that do not concern a publisher (Content-Type of
// woken long-polls, the stray body after a bare If-None-Match) are left out.
type pushModule struct {
	t         testing.TB
	lpTimeout time.Duration
	label     string // if set, info is JSON with this Content-Type

	conns atomic.Int32 // connections accepted

	mu       sync.Mutex
	channels map[string]*fakeChannel
	counts   map[string]int // publisher requests by method
}

type fakeChannel struct {
	msgs     []fakeMessage
	waiting  int
	lastSeen time.Time     // zero: never requested
	wake     chan struct{} // closed (and replaced) on a new message or DELETE
	deleted  bool
}

type fakeMessage struct {
	id          relay.MessageID
	body        []byte
	contentType string
}

const fakeBufferLength = 10

func newPushModule(t testing.TB) *pushModule {
	return &pushModule{t: t, lpTimeout: 300 * time.Millisecond,
		channels: make(map[string]*fakeChannel), counts: make(map[string]int)}
}

// start serves pm, behind fi if fi is not nil.
func (pm *pushModule) start(fi *faultInjector) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/publish", pm.publisher)
	mux.HandleFunc("/activity", pm.subscriber)
	var h http.Handler = mux
	if fi != nil {
		fi.next = mux
		h = fi
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			pm.conns.Add(1)
		}
	}
	srv.Start()
	pm.t.Cleanup(srv.Close)
	return srv
}

func (pm *pushModule) count(method string) int {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	return pm.counts[method]
}

func (pm *pushModule) total() int {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	n := 0
	for _, c := range pm.counts {
		n += c
	}
	return n
}

func (pm *pushModule) channel(id string) (*fakeChannel, bool) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	ch, ok := pm.channels[id]
	return ch, ok
}

func htmlPage(w http.ResponseWriter, code int) {
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(code)
	fmt.Fprintf(w, "<html>\r\n<head><title>%d %s</title></head>\r\n<body bgcolor=\"white\">\r\n<center><h1>%d %s</h1></center>\r\n<hr><center>nginx/1.6.3</center>\r\n</body>\r\n</html>\r\n",
		code, http.StatusText(code), code, http.StatusText(code))
}

func empty(w http.ResponseWriter, code int) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(code)
}

// info writes the channel info; call with pm.mu held.
func (pm *pushModule) info(w http.ResponseWriter, r *http.Request, code int, ch *fakeChannel) {
	requested := -1
	if !ch.lastSeen.IsZero() {
		requested = int(time.Since(ch.lastSeen).Seconds())
	}
	label := pm.label
	if label == "" && strings.Contains(r.Header.Get("Accept"), "json") {
		label = "application/json\x00"
	}
	var body string
	if label != "" {
		body = fmt.Sprintf(`{"messages": %d, "requested": %d, "subscribers": %d }`, len(ch.msgs), requested, ch.waiting)
	} else {
		label = "text/plain"
		body = fmt.Sprintf("queued messages: %d\r\nlast requested: %d sec. ago (-1=never)\r\nactive subscribers: %d",
			len(ch.msgs), requested, ch.waiting)
	}
	w.Header()["Content-Type"] = []string{label} // verbatim, stray byte and all
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	io.WriteString(w, body)
}

func (pm *pushModule) publisher(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		pm.t.Errorf("fake push module: the client sent HEAD %s", r.URL)
		empty(w, http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		pm.t.Errorf("fake push module: reading body: %v", err)
		return
	}
	id := r.URL.Query().Get("channel")

	pm.mu.Lock()
	defer pm.mu.Unlock()
	pm.counts[r.Method]++
	if id == "" {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "No channel id provided.")
		return
	}
	ch, exists := pm.channels[id]
	switch r.Method {
	case http.MethodGet:
		if !exists {
			empty(w, http.StatusNotFound)
			return
		}
		pm.info(w, r, http.StatusOK, ch)
	case http.MethodPut:
		if !exists {
			ch = &fakeChannel{wake: make(chan struct{})}
			pm.channels[id] = ch
		}
		pm.info(w, r, http.StatusOK, ch) // body ignored, nobody woken
	case http.MethodPost:
		if len(body) == 0 {
			htmlPage(w, http.StatusInternalServerError) // "trying to push an empty message"
			return
		}
		if !exists {
			ch = &fakeChannel{wake: make(chan struct{})}
			pm.channels[id] = ch
		}
		now := time.Now().Unix()
		m := fakeMessage{id: relay.MessageID{Time: now}, body: body, contentType: r.Header.Get("Content-Type")}
		if n := len(ch.msgs); n > 0 && ch.msgs[n-1].id.Time == now {
			m.id.Tag = ch.msgs[n-1].id.Tag + 1
		}
		ch.msgs = append(ch.msgs, m)
		if len(ch.msgs) > fakeBufferLength {
			ch.msgs = ch.msgs[len(ch.msgs)-fakeBufferLength:]
		}
		code := http.StatusAccepted
		if ch.waiting > 0 {
			code = http.StatusCreated
		}
		pm.info(w, r, code, ch) // subscribers counted before delivery
		close(ch.wake)
		ch.wake = make(chan struct{})
	case http.MethodDelete:
		if !exists {
			empty(w, http.StatusNotFound)
			return
		}
		pm.info(w, r, http.StatusOK, ch) // the info from before
		delete(pm.channels, id)
		ch.deleted = true
		close(ch.wake)
	default:
		w.Header().Set("Allow", "GET, POST, PUT, DELETE")
		htmlPage(w, http.StatusMethodNotAllowed)
	}
}

func (pm *pushModule) subscriber(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		pm.t.Errorf("fake push module: HEAD %s", r.URL)
		empty(w, http.StatusMethodNotAllowed)
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		htmlPage(w, http.StatusMethodNotAllowed)
		return
	}
	id := r.URL.Query().Get("channel")
	// Resume after (If-Modified-Since, If-None-Match); a junk tag is 0.
	var after relay.MessageID
	hasID := false
	if ims, err := http.ParseTime(r.Header.Get("If-Modified-Since")); err == nil {
		after.Time, hasID = ims.Unix(), true
		after.Tag, _ = strconv.ParseInt(r.Header.Get("If-None-Match"), 10, 64)
	}
	timeout := time.NewTimer(pm.lpTimeout)
	defer timeout.Stop()
	waiting := false
	pm.mu.Lock()
	ch, ok := pm.channels[id]
	if !ok {
		pm.mu.Unlock()
		htmlPage(w, http.StatusForbidden)
		return
	}
	ch.lastSeen = time.Now()
	for {
		for _, m := range ch.msgs {
			if !hasID || m.id.Compare(after) > 0 {
				if waiting {
					ch.waiting--
				}
				pm.mu.Unlock()
				if m.contentType != "" {
					w.Header().Set("Content-Type", m.contentType)
				}
				w.Header().Set("Last-Modified", time.Unix(m.id.Time, 0).UTC().Format(http.TimeFormat))
				w.Header().Set("Etag", strconv.FormatInt(m.id.Tag, 10))
				w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
				w.Write(m.body)
				return
			}
		}
		if !waiting {
			ch.waiting++
			waiting = true
		}
		wake := ch.wake
		pm.mu.Unlock()
		select {
		case <-wake:
		case <-timeout.C:
			pm.mu.Lock()
			ch.waiting--
			pm.mu.Unlock()
			empty(w, http.StatusNotModified)
			return
		case <-r.Context().Done():
			pm.mu.Lock()
			ch.waiting--
			pm.mu.Unlock()
			return
		}
		pm.mu.Lock()
		if ch.deleted {
			pm.mu.Unlock()
			empty(w, http.StatusGone)
			return
		}
	}
}

// dropConnection, as a fault, closes the connection without an answer.
const dropConnection = -1

// faultInjector answers requests with queued faults, one per request, before
// handing them to next: a status code (an nginx HTML page) or
// dropConnection. It counts every request it sees.
type faultInjector struct {
	next http.Handler

	mu     sync.Mutex
	faults []int
	seen   int
}

func (fi *faultInjector) add(faults ...int) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	fi.faults = append(fi.faults, faults...)
}

func (fi *faultInjector) requests() int {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	return fi.seen
}

func (fi *faultInjector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fi.mu.Lock()
	fi.seen++
	fault := 0
	if len(fi.faults) > 0 {
		fault, fi.faults = fi.faults[0], fi.faults[1:]
	}
	fi.mu.Unlock()
	switch {
	case fault == 0:
		fi.next.ServeHTTP(w, r)
	case fault == dropConnection:
		io.Copy(io.Discard, r.Body) // the request arrived whole
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		conn.Close()
	default:
		io.Copy(io.Discard, r.Body)
		htmlPage(w, fault)
	}
}
