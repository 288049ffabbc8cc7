package hub

import (
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/sessionpush/sessionpush/relay"
)

var _ relay.StatsReporter = (*Hub)(nil)

// ErrReservedEvent is wrapped by the error of [Hub.Publish] for a message
// whose Event is a name the hub uses itself: "gap", its gap signal to
// EventSource listeners.
var ErrReservedEvent = errors.New("reserved event name")

// transport is how a listener is served.
type transport uint8

const (
	transportLongPoll transport = iota
	transportEventSource
	transportWebSocket
	numTransports
)

func (t transport) String() string {
	switch t {
	case transportEventSource:
		return "eventsource"
	case transportWebSocket:
		return "websocket"
	}
	return "longpoll"
}

// Stats is a snapshot of a Hub's gauges and counters (see [Hub.Stats]).
// Each field is read atomically on its own; the snapshot as a whole is not
// taken at one instant.
type Stats struct {
	// Channels is the number of open channels now.
	Channels int64
	// Listeners is the number of listeners now, by transport.
	Listeners TransportCounts
	// Published counts the messages published since New.
	Published uint64
	// Deliveries counts the messages written to listeners: an EventSource
	// event, a long-poll answer, a WebSocket frame.
	Deliveries uint64
	// WriteFailures counts the listeners dropped because a write to them
	// failed (the client went away, the connection broke), a timeout
	// aside.
	WriteFailures uint64
	// SlowDisconnects counts the listeners disconnected because a write,
	// or a WebSocket ping's answer, did not complete within
	// Options.WriteTimeout.
	SlowDisconnects uint64
	// Gaps counts the gap signals sent: listeners told that messages they
	// had not had were dropped (see [Hub.ServeListener]).
	Gaps uint64
	// BufferedBytes is the memory the buffered messages of all channels
	// hold now, as Options.MaxBufferedBytes counts it.
	BufferedBytes int64
	// Evictions counts the buffered messages dropped to keep
	// Options.MaxBufferedBytes, before their channel's buffer length or
	// their time to live would have dropped them.
	Evictions uint64
	// Disconnects counts the listeners the hub ended, by reason; it
	// repeats SlowDisconnects and WriteFailures and adds the other
	// reasons. A listener that ends by itself (the client closed the
	// connection while no write was under way, or the request's context
	// ended) is not counted.
	Disconnects DisconnectCounts
	// Refused counts the listeners refused, by the HTTP status of the
	// answer: 400, 403, 405, 503, and WebSocket handshakes refused by
	// the WebSocket library. Nil when none was.
	Refused map[int]uint64
}

// DisconnectCounts is a number of listeners ended by the hub, per reason.
type DisconnectCounts struct {
	// Slow: a write, or a WebSocket ping's answer, did not complete
	// within Options.WriteTimeout (the same as Stats.SlowDisconnects).
	Slow uint64
	// WriteFailed: a write failed otherwise, as when the client went
	// away during it (the same as Stats.WriteFailures).
	WriteFailed uint64
	// ChannelClosed: the channel was closed, or the hub shut down; the
	// listener was told so (410, ":410: 410 Gone", WebSocket close 1001).
	ChannelClosed uint64
	// LongPollTimeout: a long-poll got no message within
	// Options.LongPollTimeout and was answered 408.
	LongPollTimeout uint64
	// Unsupported: the ResponseWriter could neither flush nor hijack, so
	// the listener could not be served (logged at error level).
	Unsupported uint64
}

// TransportCounts is a number per transport.
type TransportCounts struct {
	LongPoll, EventSource, WebSocket int64
}

// counters are a Hub's stats, updated atomically.
type counters struct {
	channels    atomic.Int64
	listeners   [numTransports]atomic.Int64
	published   atomic.Uint64
	deliveries  atomic.Uint64
	writeFailed atomic.Uint64
	slow        atomic.Uint64
	gaps        atomic.Uint64
	gone        atomic.Uint64
	expired     atomic.Uint64
	unsupported atomic.Uint64
	refused     sync.Map // int status -> *atomic.Uint64
}

func (c *counters) refusedAdd(code int) {
	v, ok := c.refused.Load(code)
	if !ok {
		v, _ = c.refused.LoadOrStore(code, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// Stats returns a snapshot of the Hub's gauges and counters. It is safe for
// concurrent use and takes no lock but for Refused's map.
func (h *Hub) Stats() Stats {
	c := &h.stats
	s := Stats{
		Channels: c.channels.Load(),
		Listeners: TransportCounts{
			LongPoll:    c.listeners[transportLongPoll].Load(),
			EventSource: c.listeners[transportEventSource].Load(),
			WebSocket:   c.listeners[transportWebSocket].Load(),
		},
		Published:       c.published.Load(),
		Deliveries:      c.deliveries.Load(),
		WriteFailures:   c.writeFailed.Load(),
		SlowDisconnects: c.slow.Load(),
		Gaps:            c.gaps.Load(),
		BufferedBytes:   h.budget.bytes.Load(),
		Evictions:       h.budget.evictions.Load(),
	}
	s.Disconnects = DisconnectCounts{
		Slow:            s.SlowDisconnects,
		WriteFailed:     s.WriteFailures,
		ChannelClosed:   c.gone.Load(),
		LongPollTimeout: c.expired.Load(),
		Unsupported:     c.unsupported.Load(),
	}
	c.refused.Range(func(k, v any) bool {
		if s.Refused == nil {
			s.Refused = make(map[int]uint64)
		}
		s.Refused[k.(int)] = v.(*atomic.Uint64).Load()
		return true
	})
	return s
}

// RelayStats returns [Hub.Stats] as [relay.Stat]s, implementing
// [relay.StatsReporter]: the gauges channels, listeners (labelled
// transport=longpoll|eventsource|websocket) and buffered_bytes, and the
// counters messages_published_total, deliveries_total,
// write_failures_total, slow_disconnects_total, gaps_total,
// buffer_evictions_total, listeners_disconnected_total (labelled
// reason=slow|write_failed|channel_closed|longpoll_timeout|unsupported,
// one per reason, see [DisconnectCounts]) and listeners_refused_total
// (labelled status=<HTTP status>, one per status seen).
func (h *Hub) RelayStats() []relay.Stat {
	s := h.Stats()
	out := []relay.Stat{
		{Name: "channels", Help: "Channels open now.", Gauge: true, Value: float64(s.Channels)},
	}
	for tr, n := range []int64{s.Listeners.LongPoll, s.Listeners.EventSource, s.Listeners.WebSocket} {
		out = append(out, relay.Stat{
			Name: "listeners", Help: "Listeners connected now, by transport.", Gauge: true,
			Labels: [][2]string{{"transport", transport(tr).String()}}, Value: float64(n),
		})
	}
	out = append(out,
		relay.Stat{Name: "messages_published_total", Help: "Messages published.", Value: float64(s.Published)},
		relay.Stat{Name: "deliveries_total", Help: "Messages written to listeners.", Value: float64(s.Deliveries)},
		relay.Stat{Name: "write_failures_total", Help: "Listeners dropped because a write to them failed.", Value: float64(s.WriteFailures)},
		relay.Stat{Name: "slow_disconnects_total", Help: "Listeners disconnected because a write did not complete within the write timeout.", Value: float64(s.SlowDisconnects)},
		relay.Stat{Name: "gaps_total", Help: "Gap signals sent to listeners that missed dropped messages.", Value: float64(s.Gaps)},
		relay.Stat{Name: "buffered_bytes", Help: "Memory held by buffered messages, of all channels.", Gauge: true, Value: float64(s.BufferedBytes)},
		relay.Stat{Name: "buffer_evictions_total", Help: "Buffered messages dropped, oldest first, to keep the memory budget.", Value: float64(s.Evictions)},
	)
	d := s.Disconnects
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"slow", d.Slow},
		{"write_failed", d.WriteFailed},
		{"channel_closed", d.ChannelClosed},
		{"longpoll_timeout", d.LongPollTimeout},
		{"unsupported", d.Unsupported},
	} {
		out = append(out, relay.Stat{
			Name: "listeners_disconnected_total", Help: "Listeners ended by the hub, by reason.",
			Labels: [][2]string{{"reason", r.reason}}, Value: float64(r.n),
		})
	}
	codes := make([]int, 0, len(s.Refused))
	for code := range s.Refused {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	for _, code := range codes {
		out = append(out, relay.Stat{
			Name: "listeners_refused_total", Help: "Listeners refused, by HTTP status.",
			Labels: [][2]string{{"status", strconv.Itoa(code)}}, Value: float64(s.Refused[code]),
		})
	}
	return out
}
