package relay

// Stat is one metric of a relay, as a number read at one moment: a counter
// that only grows while the relay runs (requests made, messages delivered)
// or a gauge that goes up and down (listeners connected now).
type Stat struct {
	// Name is a metric name in snake_case without a prefix, such as
	// "listeners" or "publish_retries_total"; counters end in "_total".
	Name string
	// Help says in one line what the number counts.
	Help string
	// Gauge is true for a value that can go down, false for a counter.
	Gauge bool
	// Labels are name/value pairs that tell apart stats of one Name, such
	// as {"transport", "websocket"}; nil for none.
	Labels [][2]string
	// Value is the reading.
	Value float64
}

// StatsReporter is implemented by relays that count what they do; the kit
// finds it by type assertion on a [Relay] and adds the stats to its own
// snapshot (sessionpush.Manager.Stats).
type StatsReporter interface {
	// RelayStats returns a snapshot of the relay's counters and gauges.
	// It is safe for concurrent use and cheap enough to call on every
	// metrics scrape.
	RelayStats() []Stat
}
