package redisstore

import (
	"context"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sessionpush/sessionpush"
)

// Defaults for the zero values of [Options], as its fields document them.
const (
	defaultPrefix   = "sessionpush:"
	defaultPageSize = 1000
)

// maxAttempts bounds the optimistic retries of Add and Remove, which only
// repeat when another client moved the same channel to another user in the
// instant between two of their steps.
const maxAttempts = 100

// Options configures a [Store]. The zero value is ready to use.
type Options struct {
	// Prefix starts every key of the store, so that several stores or
	// applications can share one Redis. If it holds no Redis Cluster
	// hash tag (a non-empty "{...}"), the whole prefix becomes the tag:
	// "sessionpush:" gives keys that start with "{sessionpush:}". With a
	// tag of its own, such as "app:{push}:", it is used as given. Either
	// way every key of the store hashes to one Cluster slot. Zero means
	// "sessionpush:".
	Prefix string

	// PageSize is how many channels [Store.All] asks Redis for at a time.
	// Zero or negative means 1000.
	PageSize int
}

// Store is a [sessionpush.Store] on Redis. It keeps no state of its own
// besides its configuration, so any number of Stores (in any number of
// processes) on the same Redis and prefix share their records. It is safe
// for concurrent use. Create it with [New].
type Store struct {
	client   redis.UniversalClient
	base     string // the prefix with its hash tag
	index    string // the sorted set of every channel ID
	pageSize int
}

var (
	_ sessionpush.Store          = (*Store)(nil)
	_ sessionpush.ChannelCounter = (*Store)(nil)
)

// New returns a Store on client, which may be a single-node, Sentinel
// (failover) or Cluster client. The Store does not own client: closing it
// stays the caller's job.
func New(client redis.UniversalClient, opts Options) *Store {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = defaultPrefix
	}
	base := hashTagged(prefix)
	pageSize := opts.PageSize
	if pageSize <= 0 {
		pageSize = defaultPageSize
	}
	return &Store{client: client, base: base, index: base + "channels", pageSize: pageSize}
}

// hashTagged returns prefix if it holds a Redis Cluster hash tag, and the
// prefix wrapped in braces otherwise.
func hashTagged(prefix string) string {
	if hasHashTag(prefix) {
		return prefix
	}
	if tagged := "{" + prefix + "}"; hasHashTag(tagged) {
		return tagged // the tag ends at the first "}", which may be in prefix
	}
	return "{sessionpush}" + prefix // prefix starts with "}": "{}" is no tag
}

// hasHashTag reports whether s holds a hash tag as Redis Cluster finds it:
// a "{", then a "}" after it with something in between.
func hasHashTag(s string) bool {
	i := strings.IndexByte(s, '{')
	if i < 0 {
		return false
	}
	j := strings.IndexByte(s[i+1:], '}')
	return j > 0
}

func (s *Store) channelKey(id string) string { return s.base + "ch:" + id }
func (s *Store) userKey(user string) string  { return s.base + "user:" + user }

// Fields of a channel's hash.
const (
	fieldUser     = "user"
	fieldOpened   = "opened"
	fieldLastSeen = "lastseen"
)

// encodeTime keeps t as Unix microseconds, which covers every date the
// Manager can meet, the zero time included.
func encodeTime(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

func decodeTime(s string) (time.Time, error) {
	us, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMicro(us), nil
}

// addScript records a channel: KEYS are the channel's hash, its new owner's
// set, the index and the set of the owner it is expected to have now (its
// new owner's set again when no other owner is expected); ARGV are the ID,
// the owner, the opened and last-seen times, and the expected owner with
// "1" when one is expected. It returns {1} when it recorded the channel,
// and {0, owner} when the channel belongs to an owner other than the new
// and the expected one, so that the caller can try again with that owner's
// set declared.
var addScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], 'user')
if old and old ~= ARGV[2] and not (ARGV[6] == '1' and old == ARGV[5]) then
	return {0, old}
end
if old and old ~= ARGV[2] then
	redis.call('SREM', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[1], 'user', ARGV[2], 'opened', ARGV[3], 'lastseen', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return {1}
`)

// removeScript deletes a channel: KEYS are the channel's hash, the index
// and, when an owner is expected, the owner's set; ARGV are the ID and the
// expected owner. It returns {1} when this call deleted the channel, {0}
// when there was none (and drops the ID from the index, should it linger),
// and {-1, owner} when the owner is not the one expected.
var removeScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], 'user')
if not old then
	redis.call('ZREM', KEYS[2], ARGV[1])
	return {0}
end
if #KEYS < 3 or old ~= ARGV[2] then
	return {-1, old}
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {1}
`)

// touchScript sets the last-seen time of the channel whose hash is KEYS[1]
// to ARGV[1] if the channel is recorded, so that a Touch never brings a
// removed channel back as a partial record.
var touchScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
	redis.call('HSET', KEYS[1], 'lastseen', ARGV[1])
	return 1
end
return 0
`)

// scriptReply splits a script's reply {code} or {code, owner}.
func scriptReply(v any) (code int64, owner string, err error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return 0, "", fmt.Errorf("unexpected script reply %v", v)
	}
	code, ok = a[0].(int64)
	if !ok {
		return 0, "", fmt.Errorf("unexpected script reply %v", v)
	}
	if len(a) > 1 {
		if owner, ok = a[1].(string); !ok {
			return 0, "", fmt.Errorf("unexpected script reply %v", v)
		}
	}
	return code, owner, nil
}

// Add implements [sessionpush.Store]. Recording the channel, indexing it
// under its owner (and out of a previous owner's index) and in the index of
// all channels happen in one step.
func (s *Store) Add(ctx context.Context, rec sessionpush.Record) error {
	keys := []string{s.channelKey(rec.ID), s.userKey(rec.User), s.index, s.userKey(rec.User)}
	args := []any{rec.ID, rec.User, encodeTime(rec.Opened), encodeTime(rec.LastSeen), "", "0"}
	for range maxAttempts {
		v, err := addScript.Run(ctx, s.client, keys, args...).Result()
		if err != nil {
			return fmt.Errorf("redisstore: add %s: %w", rec.ID, err)
		}
		code, owner, err := scriptReply(v)
		if err != nil {
			return fmt.Errorf("redisstore: add %s: %w", rec.ID, err)
		}
		if code == 1 {
			return nil
		}
		// Owned by someone else: move it from that owner's set.
		keys[3], args[4], args[5] = s.userKey(owner), owner, "1"
	}
	return fmt.Errorf("redisstore: add %s: its owner kept changing; gave up after %d attempts", rec.ID, maxAttempts)
}

// Get implements [sessionpush.Store].
func (s *Store) Get(ctx context.Context, id string) (sessionpush.Record, bool, error) {
	v, err := s.client.HMGet(ctx, s.channelKey(id), fieldUser, fieldOpened, fieldLastSeen).Result()
	if err != nil {
		return sessionpush.Record{}, false, fmt.Errorf("redisstore: get %s: %w", id, err)
	}
	rec, ok, err := decodeRecord(id, v)
	if err != nil {
		return sessionpush.Record{}, false, fmt.Errorf("redisstore: get %s: %w", id, err)
	}
	return rec, ok, nil
}

// decodeRecord makes a record of channel id from the reply of HMGET user
// opened lastseen. A missing hash is ok=false.
func decodeRecord(id string, v []any) (rec sessionpush.Record, ok bool, err error) {
	if len(v) != 3 || v[0] == nil {
		return sessionpush.Record{}, false, nil
	}
	user, _ := v[0].(string)
	opened, _ := v[1].(string)
	lastSeen, _ := v[2].(string)
	rec = sessionpush.Record{ID: id, User: user}
	var errO, errL error
	rec.Opened, errO = decodeTime(opened)
	rec.LastSeen, errL = decodeTime(lastSeen)
	if errO != nil || errL != nil {
		return sessionpush.Record{}, false, fmt.Errorf("malformed record: opened %q, lastseen %q", opened, lastSeen)
	}
	return rec, true, nil
}

// getMany reads the records of ids in one round trip, leaving out the ones
// that no longer exist.
func (s *Store) getMany(ctx context.Context, ids []string) ([]sessionpush.Record, error) {
	cmds := make([]*redis.SliceCmd, len(ids))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, s.channelKey(id), fieldUser, fieldOpened, fieldLastSeen)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	recs := make([]sessionpush.Record, 0, len(ids))
	for i, cmd := range cmds {
		rec, ok, err := decodeRecord(ids[i], cmd.Val())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ids[i], err)
		}
		if ok {
			recs = append(recs, rec)
		}
	}
	return recs, nil
}

// ByUser implements [sessionpush.Store]. It reads the user's set, then the
// records in one pipeline; a channel removed or moved to another user in
// between is left out.
func (s *Store) ByUser(ctx context.Context, user string) ([]sessionpush.Record, error) {
	ids, err := s.client.SMembers(ctx, s.userKey(user)).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: channels of %q: %w", user, err)
	}
	if len(ids) == 0 {
		return []sessionpush.Record{}, nil
	}
	recs, err := s.getMany(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("redisstore: channels of %q: %w", user, err)
	}
	mine := recs[:0]
	for _, rec := range recs {
		if rec.User == user {
			mine = append(mine, rec)
		}
	}
	return mine, nil
}

// All implements [sessionpush.Store]. It walks the index of all channels
// in ID order, PageSize IDs per request (ZRANGE BYLEX with LIMIT, resuming
// after the last ID seen), and reads each page's records in one pipeline.
// No request does more than a page's worth of work, and the walk yields
// each channel at most once, every channel that exists throughout the walk
// included; a channel removed meanwhile is left out. The loop body may call
// the store. A failure or the end of ctx ends the walk with an error.
func (s *Store) All(ctx context.Context) iter.Seq2[sessionpush.Record, error] {
	return func(yield func(sessionpush.Record, error) bool) {
		start := "-"
		for {
			if err := ctx.Err(); err != nil {
				yield(sessionpush.Record{}, fmt.Errorf("redisstore: list channels: %w", err))
				return
			}
			ids, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{
				Key: s.index, Start: start, Stop: "+", ByLex: true, Count: int64(s.pageSize),
			}).Result()
			if err != nil {
				yield(sessionpush.Record{}, fmt.Errorf("redisstore: list channels: %w", err))
				return
			}
			if len(ids) == 0 {
				return
			}
			recs, err := s.getMany(ctx, ids)
			if err != nil {
				yield(sessionpush.Record{}, fmt.Errorf("redisstore: list channels: %w", err))
				return
			}
			for _, rec := range recs {
				if err := ctx.Err(); err != nil {
					yield(sessionpush.Record{}, fmt.Errorf("redisstore: list channels: %w", err))
					return
				}
				if !yield(rec, nil) {
					return
				}
			}
			if len(ids) < s.pageSize {
				return
			}
			start = "(" + ids[len(ids)-1]
		}
	}
}

// CountChannels implements [sessionpush.ChannelCounter]: the number of
// channels recorded, in one request (ZCARD of the index), so that
// Manager.CountChannels and package metrics report the open channels of
// every instance sharing the store.
func (s *Store) CountChannels(ctx context.Context) (int, error) {
	n, err := s.client.ZCard(ctx, s.index).Result()
	if err != nil {
		return 0, fmt.Errorf("redisstore: count channels: %w", err)
	}
	return int(n), nil
}

// Touch implements [sessionpush.Store]. A channel that is not recorded
// stays so.
func (s *Store) Touch(ctx context.Context, id string, t time.Time) (bool, error) {
	n, err := touchScript.Run(ctx, s.client, []string{s.channelKey(id)}, encodeTime(t)).Int()
	if err != nil {
		return false, fmt.Errorf("redisstore: touch %s: %w", id, err)
	}
	return n == 1, nil
}

// Remove implements [sessionpush.Store]. Deleting the record and dropping
// it from both indexes happen in one step, and only the call that deleted
// it reports removed=true.
func (s *Store) Remove(ctx context.Context, id string) (bool, error) {
	keys := []string{s.channelKey(id), s.index}
	args := []any{id, ""}
	for range maxAttempts {
		v, err := removeScript.Run(ctx, s.client, keys, args...).Result()
		if err != nil {
			return false, fmt.Errorf("redisstore: remove %s: %w", id, err)
		}
		code, owner, err := scriptReply(v)
		if err != nil {
			return false, fmt.Errorf("redisstore: remove %s: %w", id, err)
		}
		switch code {
		case 1:
			return true, nil
		case 0:
			return false, nil
		}
		// Now that the owner is known, declare its set and try again.
		keys = []string{s.channelKey(id), s.index, s.userKey(owner)}
		args[1] = owner
	}
	return false, fmt.Errorf("redisstore: remove %s: its owner kept changing; gave up after %d attempts", id, maxAttempts)
}
