package redishub

import (
	"sync/atomic"

	"github.com/sessionpush/sessionpush/relay"
)

// stats counts what the Relay does besides its hub's work.
type stats struct {
	published      atomic.Int64 // messages published through this instance
	notified       atomic.Int64 // messages applied to replicas from notifications
	caughtUp       atomic.Int64 // messages applied to replicas from the streams
	closed         atomic.Int64 // replicas closed because their channel was
	replicasClosed atomic.Int64 // replicas closed for want of listeners
	openFailed     atomic.Int64 // replicas that could not be opened
	unavailable    atomic.Int64 // listeners answered 503: Redis unreachable
	redisFailed    atomic.Int64 // requests that Redis failed
	linkDown       atomic.Int64 // failures of the subscription link
	lost           atomic.Int64 // replicas whose channel Redis no longer knew
}

// RelayStats returns the hub's stats (listeners, deliveries, gaps... of this
// instance) and the Relay's own, prefixed "redis_".
func (r *Relay) RelayStats() []relay.Stat {
	st := r.hub.RelayStats()
	r.mu.Lock()
	replicas := len(r.replicas)
	r.mu.Unlock()
	c := func(name, help string, v *atomic.Int64) relay.Stat {
		return relay.Stat{Name: name, Help: help, Value: float64(v.Load())}
	}
	return append(st,
		relay.Stat{Name: "redis_replicas", Help: "Channels this instance holds a replica of.", Gauge: true, Value: float64(replicas)},
		c("redis_published_total", "Messages published to Redis through this instance.", &r.stats.published),
		c("redis_notified_total", "Messages applied to replicas from Redis notifications.", &r.stats.notified),
		c("redis_caught_up_total", "Messages applied to replicas from the channels' streams (on opening, or after the link to Redis failed).", &r.stats.caughtUp),
		c("redis_channels_closed_total", "Replicas closed because their channel was closed.", &r.stats.closed),
		c("redis_replicas_released_total", "Replicas closed after their last listener left.", &r.stats.replicasClosed),
		c("redis_replica_open_failures_total", "Replicas that could not be opened (channel not open, or Redis failed).", &r.stats.openFailed),
		c("redis_listeners_unavailable_total", "Listeners answered 503 because Redis could not be reached.", &r.stats.unavailable),
		c("redis_failures_total", "Requests to Redis that failed.", &r.stats.redisFailed),
		c("redis_link_failures_total", "Failures of the subscription link to Redis.", &r.stats.linkDown),
		c("redis_channels_lost_total", "Replicas whose channel Redis no longer knew after the link came back.", &r.stats.lost),
	)
}
