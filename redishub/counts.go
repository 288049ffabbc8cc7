package redishub

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// syncLoop writes the listener counts and closes unneeded replicas every
// Options.SyncInterval until Shutdown.
func (r *Relay) syncLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.Sync(context.Background())
		}
	}
}

// Sync does at once what the Relay does every Options.SyncInterval: it
// writes this instance's changed listener counts to Redis (and each
// again before Options.CountTTL lapses), reads the other instances' counts
// for the listener cap, and closes the replicas that have had no listener
// for Options.ReplicaGrace. Tests call it to await a count.
func (r *Relay) Sync(ctx context.Context) error {
	mono := r.mono(time.Now())
	type item struct {
		rp    *replica
		n     int
		req   time.Time
		close bool
	}
	var items []item
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	for _, rp := range r.replicas {
		select {
		case <-rp.opened:
		default:
			continue
		}
		n, req, ok := r.hub.ListenerCount(rp.id)
		if !ok {
			continue
		}
		it := item{rp: rp, n: n, req: req}
		switch {
		case n > 0 || rp.pending > 0:
			rp.idleSince = 0
		case rp.idleSince == 0:
			rp.idleSince = mono
		case time.Duration(mono-rp.idleSince) >= r.opts.ReplicaGrace:
			if r.hub.CloseUnlistened(rp.id) {
				it.close, it.n = true, 0
				r.forget(rp)
				rp.mu.Lock()
				rp.gone = true
				rp.mu.Unlock()
			}
		}
		rp.mu.Lock()
		// A channel near its cap is read every time, for the cap's sake.
		near := rp.cap >= 0 && 2*(n+rp.others) >= rp.cap
		due := it.close || near || n != int(rp.synced) || unixNano(req) != rp.lastReq ||
			rp.syncAt == 0 || time.Duration(mono-rp.syncAt) >= r.opts.CountTTL/3
		rp.mu.Unlock()
		if due {
			items = append(items, it)
		}
	}
	r.mu.Unlock()
	for _, it := range items {
		if it.close {
			r.stats.replicasClosed.Add(1)
			r.unsubscribe(it.rp)
		}
	}
	var errs []error
	for len(items) > 0 {
		batch := items[:min(len(items), syncBatch)]
		items = items[len(batch):]
		ttl := r.opts.CountTTL.Milliseconds()
		cmds, err := r.pipeline(ctx, func(p redis.Pipeliner) []*redis.Cmd {
			cmds := make([]*redis.Cmd, len(batch))
			for i, it := range batch {
				var req int64
				if unixNano(it.req) != it.rp.lastReq && !it.req.IsZero() {
					req = it.req.UnixMilli()
				}
				cmds[i] = syncScript.EvalSha(ctx, p, r.keys(it.rp.id), r.instance, it.n, ttl, req)
			}
			return cmds
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("redishub: sync: %w: %w", ErrRedis, err))
			continue
		}
		for i, it := range batch {
			res, err := cmds[i].Slice()
			it.rp.mu.Lock()
			if err == nil || errors.Is(err, redis.Nil) {
				it.rp.synced, it.rp.lastReq, it.rp.syncAt = int32(min(it.n, math.MaxInt32)), unixNano(it.req), mono
			}
			if err == nil && len(res) == 2 && !it.close {
				cs, _ := res[0].(string)
				if c, err := strconv.Atoi(cs); err == nil {
					it.rp.cap = c
				}
				o, _ := res[1].(int64)
				it.rp.others = int(o)
				r.limit(it.rp)
			}
			it.rp.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// mono returns t on the Relay's monotonic clock: nanoseconds since New,
// plus one, so that zero means never.
func (r *Relay) mono(t time.Time) int64 { return int64(t.Sub(r.epoch)) + 1 }

// unixNano returns t in Unix nanoseconds, zero for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
