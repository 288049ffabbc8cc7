// Package redishub is a push relay for several application instances
// sharing one Redis: every instance serves listeners with the embedded
// relay's endpoints (long-poll, EventSource, WebSocket; the same wire
// contract and gap signal as package hub), while the channels, their
// message buffers, their deletion and their listener counts live in Redis.
// Turn it on with
//
//	r, err := redishub.New(client, redishub.Options{})
//	mgr, err := sessionpush.New(sessionpush.Config{Sessions: store, Relay: r,
//		Store: redisstore.New(client, redisstore.Options{})})
//
// on every instance; Manager.Shutdown shuts the Relay down. The client may
// be any go-redis UniversalClient (single node, Sentinel, Cluster).
//
// # Keys
//
// A channel C has, under Options.Prefix P and the hash tag {C} (so that all
// of them sit on one Redis Cluster slot): P{C}:m, a hash with the newest
// message ID ("last"), the newest one trimmed from the buffer ("dropped"), the
// listener cap ("cap") and the time a listener last
// connected ("req"); P{C}:s, a stream holding the buffer, whose entry IDs
// are the message IDs themselves ("<sec>-<tag>", shown as "<sec>:<tag>"),
// trimmed to Options.Hub.BufferLength (MAXLEN) and by Options.Hub.MessageTTL
// (MINID, and the key's expiry); P{C}:l, a hash of each instance's listener
// count with the time it lapses; P{C}:x, a tombstone left for ten minutes
// when the channel is closed. Notifications go to the Pub/Sub channel
// P{C}:n.
//
// # Publishing
//
// Publish is one script call, one round trip, whatever the number of
// listeners and instances: it gives the message the channel's next ID from
// the Redis clock (strictly after the last, as the embedded relay's IDs),
// appends it to the stream, trims the stream, and PUBLISHes the message
// (ID, time, event, content type, body) to the channel's notification
// channel. Message IDs are thus the same on every instance, and a listener
// can resume on any of them.
//
// # Replicas
//
// Each instance keeps a local [hub.Hub] whose channels are replicas of the
// channels it has listeners for (hub.Hub.OpenReplica, PublishAt). The first
// listener of a channel on an instance opens the replica: the instance
// SUBSCRIBEs to the channel's notifications and awaits Redis's confirmation
// (from then on it misses nothing: notifications are queued), reads the
// channel's state and stream in one script (403 if the channel is not open),
// opens the replica with what the stream has dropped as a gap, applies the
// stream's entries, then the queued notifications; an ID the replica
// already has is ignored, so each message is applied once. From then on one
// reader per instance applies each notification to its replica, which
// hands it to the instance's listeners: a message is read from Redis once
// per instance that has listeners of the channel, never once per listener.
// A listener may resume on an instance whose replica has not applied its
// last message yet (the notification is still on its way): it gets the
// messages after its position as they come, and none up to it again.
// A replica without local listeners for Options.ReplicaGrace is closed and
// unsubscribed.
//
// When the subscription link fails, go-redis dials again and subscribes to
// every channel again; each confirmation that follows sends its replica to
// catch up from the stream (a batch of channels per round trip), holding
// the notifications meanwhile. What was published while the link was down
// is delivered then, once, in order, and what the stream dropped meanwhile
// becomes a gap. Listeners stay connected throughout; only listeners that
// need a new replica are answered 503 while Redis cannot be reached, and
// Publish, Open, Info and Close fail with errors wrapping [ErrRedis]. A
// channel that Redis no longer knows after the link comes back (Redis lost
// its data) keeps its replica and its listeners, who get what is published
// once the channel is opened again; a channel closed meanwhile (its
// tombstone) is closed.
//
// Close deletes the channel's keys and PUBLISHes its end: every instance
// closes its replica, which ends the listeners as the embedded relay does
// (long-poll 410, EventSource ":410: 410 Gone", WebSocket close 1001).
//
// Notifications use classic Pub/Sub (PUBLISH, SUBSCRIBE), which a Redis
// Cluster carries to every node, so one connection per instance, to any
// node, hears every channel. Sharded Pub/Sub (SPUBLISH, Redis 7) would keep
// each message on its shard, at the cost of one subscription connection per
// shard; it is not used.
//
// # Listener cap
//
// Each instance writes its listener count per channel to Redis every
// Options.SyncInterval when it changed (and again before Options.CountTTL
// lapses, so that the counts of an instance that died without Shutdown
// lapse), and reads back the others' counts; its replica then admits the
// cap less the others' listeners. A channel's first listener on an
// instance reads the counts at once; a channel with at least half its cap
// in use is read every interval. So the cap is exact on one instance; across
// instances, listeners that connect to different instances within one
// SyncInterval may together exceed it, by at most those that arrive
// elsewhere in that interval. Receipt.Listeners and Info.Listeners count
// the other instances as they last wrote their counts. The kit's
// broadcast channel has no cap (SetMaxListeners reaches every instance at
// once).
//
// Ownership is checked by each instance as with the embedded relay: the
// kit's ListenHandler, on its Store (redisstore), before the relay.
package redishub
