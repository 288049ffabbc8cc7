// Package redisstore keeps the open channels of sessionpush in Redis, so that
// several instances of an application share them: a channel opened through
// one instance can be pushed to, broadcast to and closed from any other.
//
// It is a module of its own, so that go-redis enters the module graph of
// the applications that use Redis only:
//
//	go get github.com/sessionpush/sessionpush/redisstore
//
//	client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{"localhost:6379"}})
//	defer client.Close()
//	mgr, err := sessionpush.New(sessionpush.Config{
//		Sessions: cookieStore,
//		Relay:    relay, // one that all instances share, such as Nchan
//		Store:    redisstore.New(client, redisstore.Options{Prefix: "myapp:push:"}),
//	})
//	...
//	go mgr.Run(ctx) // on every instance
//
// [New] takes any [redis.UniversalClient]: a single node, Sentinel
// (failover) or Cluster client. A [Store] is safe for concurrent use and
// holds no state besides its options, so Stores in any number of processes
// on the same Redis and prefix see the same records.
//
// # Keys
//
// With the default prefix "sessionpush:" a store uses these keys:
//
//	{sessionpush:}ch:<channel>   hash: user, opened, lastseen (Unix microseconds)
//	{sessionpush:}user:<user>    set of the user's channel IDs
//	{sessionpush:}channels       sorted set of every channel ID, all with score 0
//
// Empty sets vanish, so a store without channels leaves no key behind. No
// key has a TTL.
//
// # Redis Cluster
//
// Every key carries the same hash tag, the braces above: Options.Prefix
// becomes the tag unless it holds one already ("app:{push}:" is used as
// given). So all the keys of a store live in one Cluster slot, on one
// primary. That is what lets every change be one atomic script over
// declared keys, whatever the user and channel IDs are; the price is that
// the store does not spread over the Cluster's nodes. It stays small, about
// half a kilobyte per open channel (some 500 MB for a million), and its load
// is a few commands per subscribe, push and expiry round, which one node
// carries comfortably; applications that need more can use several
// prefixes, one per tenant, which hash to different slots.
//
// # Atomicity
//
// [Store.Add], [Store.Remove] and [Store.Touch] each run one Lua script:
//
//   - Add writes the hash, adds the ID to its owner's set and to the index
//     and, when the channel had another owner, takes it out of that owner's
//     set, all in one step. A script may touch only keys that it declares,
//     and the previous owner is known only inside Redis, so when it differs
//     the script changes nothing and names it, and Add runs the script
//     again with that owner's set declared: an optimistic retry that
//     repeats only while other clients keep moving the same channel.
//   - Remove deletes the hash and drops the ID from both indexes the same
//     way; only the script run that deleted the hash reports removed=true,
//     so of several instances expiring or closing a channel exactly one
//     acts on it.
//   - Touch sets lastseen only if the hash exists, so it never brings back
//     a removed channel.
//
// [Store.Get] is one HMGET. [Store.ByUser] reads the user's set, then the
// hashes in one pipeline, leaving out channels removed or moved meanwhile.
//
// # Listing every channel
//
// [Store.All], which Broadcast and idle expiry use, walks the index in ID
// order with ZRANGE ... BYLEX LIMIT 0 <PageSize>, each page resuming after
// the last ID of the one before, and reads each page's hashes in one
// pipeline. Like SCAN it never blocks Redis for more than a page's work,
// and unlike SCAN it yields no channel twice: every channel that exists
// throughout the walk comes exactly once, and channels added or removed
// meanwhile come at most once. The store never sends KEYS or SCAN.
//
// # Idle expiry
//
// Records live until they are removed, exactly as in the in-memory store:
// [sessionpush.Manager.ExpireIdle] (run by [sessionpush.Manager.Run]) reads
// lastseen, asks the relay about listeners, and removes and closes idle
// channels. Run it on every instance; each idle channel is closed by exactly
// one. The store sets no Redis TTL, which would drop records without closing
// their channels on the relay; for the same reason, give Redis a
// maxmemory-policy that does not evict these keys (noeviction or a volatile-
// policy).
//
// # Times
//
// Times are kept as Unix microseconds and come back in the local time zone;
// the zero time stays zero.
//
// # Errors and requirements
//
// Errors start with "redisstore: " and wrap go-redis's errors (so
// context.DeadlineExceeded and friends can be tested with errors.Is); a
// missing record is never one. The store needs Redis 6.2 or later (ZRANGE
// BYLEX) with Lua scripting.
package redisstore
