//! The Lua scripts that make each step of the broker contract atomic in
//! Redis. They build no key names of their own: keys and prefixes come in
//! as arguments, from [`crate::cluster::keys`].
//!
//! Every script is called with no declared keys: `ARGV` starts with the
//! number of keys, the keys, and the publish command (`PUBLISH`, or
//! `SPUBLISH` on a Redis Cluster); [`PRELUDE`] turns that back into
//! `KEYS`, `PUBLISH` and `ARGV`. On a Redis Cluster master a script with no
//! declared keys may touch keys of several slots, as long as the master
//! serves them all (each call goes to the master of its rooms), which one
//! batch of appends over many rooms needs.

/// Put in front of every script; see the module's text.
pub(crate) const PRELUDE: &str = r"
local nk = tonumber(ARGV[1])
local KEYS = {unpack(ARGV, 2, nk + 1)}
local PUBLISH = ARGV[nk + 2]
local ARGV = {unpack(ARGV, nk + 3)}
";

/// A batch of appends in one call: each room's epoch is read once, every
/// message is kept and published in batch order, numbered by the stream
/// itself (entry id `0-<offset>`: `XADD … 0-*` takes the next sequence
/// number, so no head is read or written), and each room's expiry is
/// pushed back only when it was last pushed back more than a refresh
/// interval ago (the expiry is the age limit plus that interval, so a
/// room lives at least the age limit after its last message). The stream
/// is trimmed approximately (`MAXLEN ~`, whole macro nodes): a room may
/// keep somewhat more than the history length, never less; `OPEN` reads at
/// most that length back.
pub(crate) const APPEND: &str = r"
-- KEYS: meta and log of each room in the batch. ARGV: max length, expiry
-- ms, refresh ms, each room's channel and epoch if it has none, then per
-- message its room's number (from 1) and its request JSON.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rooms = #KEYS / 2
local epochs, stale = {}, {}
for r = 1, rooms do
  local meta = redis.call('HMGET', KEYS[2 * r - 1], 'epoch', 'refreshed')
  if meta[1] then
    epochs[r] = meta[1]
    stale[r] = now - tonumber(meta[2] or 0) >= tonumber(ARGV[3])
  else
    redis.call('DEL', KEYS[2 * r])
    epochs[r] = ARGV[3 + 2 * r]
    redis.call('HSET', KEYS[2 * r - 1], 'epoch', epochs[r])
    stale[r] = true
  end
end
local offsets = {}
for i = 4 + 2 * rooms, #ARGV, 2 do
  local r = tonumber(ARGV[i])
  local id = redis.call('XADD', KEYS[2 * r], 'MAXLEN', '~', ARGV[1], '0-*', 'm', ARGV[i + 1])
  local head = string.sub(id, 3)
  -- A new stream has no expiry yet.
  if head == '1' then stale[r] = true end
  redis.call(PUBLISH, ARGV[2 + 2 * r], 'm ' .. head .. ' ' .. epochs[r] .. ' ' .. ARGV[i + 1])
  offsets[#offsets + 1] = head
end
for r = 1, rooms do
  if stale[r] then
    redis.call('HSET', KEYS[2 * r - 1], 'refreshed', now)
    redis.call('PEXPIRE', KEYS[2 * r - 1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2 * r], ARGV[2])
  end
end
return {epochs, offsets}
";

/// A room's epoch (a new one for a room without), its head (the last
/// entry's sequence number), the retained messages after a position (all
/// of them when the position is in another epoch), and the members
/// present on live nodes.
pub(crate) const OPEN: &str = r"
-- KEYS: meta, log, presence, nodes. ARGV: epoch if new, expiry ms, after,
-- max count, the epoch `after` is in ('' for none)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local node = string.match(all[i], '^(%d+):')
  local deadline = node and redis.call('ZSCORE', KEYS[4], node)
  if deadline and tonumber(deadline) > now then
    table.insert(members, all[i + 1])
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'refreshed', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {ARGV[1], 0, {}, members}
end
local head = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if last[1] then head = tonumber(string.sub(last[1][1], 3)) end
local start = math.max(0, head - tonumber(ARGV[4]))
if ARGV[5] == epoch then start = math.max(tonumber(ARGV[3]), start) end
local entries = redis.call('XRANGE', KEYS[2], '(0-' .. start, '+')
return {epoch, head, entries, members}
";

pub(crate) const PRESENCE: &str = r"
-- KEYS: presence, node rooms. ARGV: field, member JSON, present, channel, event
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[2], KEYS[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call(PUBLISH, ARGV[4], ARGV[5])
return 1
";

pub(crate) const HEARTBEAT: &str = r"
-- KEYS: nodes, online. ARGV: node, ttl ms, online count, node rooms key
-- prefix and suffix, nodes channel
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local was_gone = (not mine) or tonumber(mine) <= now
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, d in ipairs(dead) do
  if d ~= ARGV[1] then
  local rooms_key = ARGV[4] .. d .. ARGV[5]
  for _, pkey in ipairs(redis.call('SMEMBERS', rooms_key)) do
    for _, f in ipairs(redis.call('HKEYS', pkey)) do
      if string.sub(f, 1, #d + 1) == d .. ':' then
        redis.call('HDEL', pkey, f)
      end
    end
  end
  redis.call('DEL', rooms_key)
  redis.call('ZREM', KEYS[1], d)
  redis.call('HDEL', KEYS[2], d)
  redis.call(PUBLISH, ARGV[6], 'g ' .. d)
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call(PUBLISH, ARGV[6], 'h ' .. ARGV[1])
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local counts = redis.call('HMGET', KEYS[2], unpack(live))
return {live, counts, was_gone and 1 or 0}
";
