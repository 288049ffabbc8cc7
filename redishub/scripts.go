package redishub

import "github.com/redis/go-redis/v9"

// The Lua scripts of the relay. Each takes the keys of one channel, which
// share a hash tag (see keys), so that each runs on one Redis Cluster node.
// KEYS are always: 1 the channel's hash ("meta": last, dropped, cap, req), 2 its
// stream of messages, 3 its hash of listener counts per instance ("<n>:<ms>",
// the count and the Redis time in milliseconds until which it counts), 4
// its tombstone, set when it is closed.
//
// Message IDs are "<sec>-<tag>", the stream entry ID itself; the relay
// shows them as "<sec>:<tag>".

// luaNow and luaListeners are shared by the scripts below: the Redis time in
// milliseconds, and the sum of the live listener counts in KEYS[3] other than
// the instance named by `except` (nil: none excluded).
const luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

const luaListeners = `
local function listeners(except)
  local n = 0
  local l = redis.call('HGETALL', KEYS[3])
  for i = 1, #l, 2 do
    if l[i] ~= except then
      local v = l[i + 1]
      local c = string.find(v, ':', 1, true)
      if tonumber(string.sub(v, c + 1)) > now then
        n = n + tonumber(string.sub(v, 1, c - 1))
      end
    end
  end
  return n
end
`

// openScript opens the channel, or keeps it, and returns its last ID.
// ARGV: 1 the default cap.
var openScript = redis.NewScript(`
local last = redis.call('HGET', KEYS[1], 'last')
if last then return last end
redis.call('HSET', KEYS[1], 'last', '0-0', 'cap', ARGV[1])
redis.call('DEL', KEYS[4])
return '0-0'
`)

// publishScript gives the message the channel's next ID (from the Redis
// clock, strictly after the last even if the clock steps back, as the
// embedded relay's IDs), appends it to the stream (trimmed to the buffer
// length and by age, noting the newest ID trimmed as "dropped"), and publishes it to the channel's notification
// channel, so that each instance with listeners reads it once. It returns
// {id, listeners, buffered}, or the error "NOTFOUND" if the channel is not
// open. ARGV: 1 notification channel, 2 buffer length (0: keep none), 3
// message TTL in ms (0: forever), 4 event, 5 content type, 6 body.
var publishScript = redis.NewScript(luaNow + luaListeners + `
local last = redis.call('HGET', KEYS[1], 'last')
if not last then return redis.error_reply('NOTFOUND channel not open') end
local dash = string.find(last, '-', 1, true)
local lsec = tonumber(string.sub(last, 1, dash - 1))
local ltag = tonumber(string.sub(last, dash + 1))
local sec = math.floor(now / 1000)
local id
if sec > lsec then
  id = string.format('%d-0', sec)
else
  id = string.format('%d-%d', lsec, ltag + 1)
end
redis.call('HSET', KEYS[1], 'last', id)
local maxlen = tonumber(ARGV[2])
if maxlen == 0 then
  redis.call('HSET', KEYS[1], 'dropped', id)
else
  redis.call('XADD', KEYS[2], id, 'p', now, 'e', ARGV[4], 't', ARGV[5], 'b', ARGV[6])
  local n = redis.call('XLEN', KEYS[2])
  if n > maxlen then
    local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', n - maxlen)
    redis.call('HSET', KEYS[1], 'dropped', old[#old][1])
    redis.call('XTRIM', KEYS[2], 'MAXLEN', maxlen)
  end
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then
    local cut = string.format('%d-0', math.floor((now - ttl) / 1000))
    local old = redis.call('XREVRANGE', KEYS[2], '(' .. cut, '-', 'COUNT', 1)
    if #old > 0 then
      redis.call('HSET', KEYS[1], 'dropped', old[1][1])
      redis.call('XTRIM', KEYS[2], 'MINID', cut)
    end
    redis.call('PEXPIRE', KEYS[2], ttl + 1000)
  end
end
redis.call('PUBLISH', ARGV[1], string.format('m%s %d %d %d ', id, now, #ARGV[4], #ARGV[5]) .. ARGV[4] .. ARGV[5] .. ARGV[6])
return {id, listeners(nil), redis.call('XLEN', KEYS[2])}
`)

// infoScript returns {last, req, listeners of other instances, unexpired
// messages}, or the error "NOTFOUND". ARGV: 1 this instance, 2 TTL in ms.
var infoScript = redis.NewScript(luaNow + luaListeners + `
local m = redis.call('HMGET', KEYS[1], 'last', 'req')
if not m[1] then return redis.error_reply('NOTFOUND channel not open') end
local ttl = tonumber(ARGV[2])
local n = 0
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  if ttl <= 0 or tonumber(e[2][2]) + ttl > now then n = n + 1 end
end
return {m[1], m[2] or '0', listeners(ARGV[1]), n}
`)

// snapshotScript returns what an instance needs to open a replica, or to
// catch one up: {last, cap, listeners of other instances, dropped,
// entries}, where dropped is the newest ID gone from the stream (trimmed by
// length or age, never added when the buffer length is zero, or all of them
// when the stream key has expired), and entries the stream, oldest first.
// It returns {} with the tombstone, when the channel was closed, and nil
// when it is not open and not known closed. ARGV: 1 this instance.
var snapshotScript = redis.NewScript(luaNow + luaListeners + `
local m = redis.call('HMGET', KEYS[1], 'last', 'cap', 'dropped')
if not m[1] then
  if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
  return false
end
local dropped = m[3] or '0-0'
if redis.call('EXISTS', KEYS[2]) == 0 then dropped = m[1] end
return {m[1], m[2], listeners(ARGV[1]), dropped, redis.call('XRANGE', KEYS[2], '-', '+')}
`)

// closeScript deletes the channel, leaves its tombstone (ARGV 2: its
// lifetime in ms), and tells every instance, even if the channel was not
// open; it returns 1 if it was. ARGV: 1 notification channel.
var closeScript = redis.NewScript(`
local open = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[1], 'x')
return open
`)

// capScript sets the channel's cap of listeners and tells every instance.
// ARGV: 1 notification channel, 2 the cap (negative: none).
var capScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOTFOUND channel not open') end
redis.call('HSET', KEYS[1], 'cap', ARGV[2])
redis.call('PUBLISH', ARGV[1], 'c' .. ARGV[2])
return 1
`)

// syncScript writes this instance's listener count of the channel (none
// when zero), valid for ARGV 3 ms, and the time a listener last connected
// (ARGV 4, Unix ms, 0: unchanged), drops the counts that have lapsed, and
// returns {cap, listeners of other instances}, or nil if the channel is not
// open. ARGV: 1 this instance, 2 its count.
var syncScript = redis.NewScript(luaNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[3])
  return false
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[3])))
else
  redis.call('HDEL', KEYS[3], ARGV[1])
end
local req = tonumber(ARGV[4])
if req > 0 then
  local old = tonumber(redis.call('HGET', KEYS[1], 'req') or '0')
  if req > old then redis.call('HSET', KEYS[1], 'req', ARGV[4]) end
end
local n = 0
local l = redis.call('HGETALL', KEYS[3])
for i = 1, #l, 2 do
  local v = l[i + 1]
  local c = string.find(v, ':', 1, true)
  if tonumber(string.sub(v, c + 1)) <= now then
    redis.call('HDEL', KEYS[3], l[i])
  elseif l[i] ~= ARGV[1] then
    n = n + tonumber(string.sub(v, 1, c - 1))
  end
end
return {redis.call('HGET', KEYS[1], 'cap'), n}
`)

var scripts = []*redis.Script{openScript, publishScript, infoScript, snapshotScript, closeScript, capScript, syncScript}
