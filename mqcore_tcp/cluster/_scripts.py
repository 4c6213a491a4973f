"""The Lua scripts run in Redis: each touches the keys of one topic only (one hash tag).

Keys of topic T (``{E}`` is T's hash tag, see :mod:`._keys`): ``mq:{E}:next``
(the next index), ``mq:{E}:cache`` (the cache: a list capped at the cache
size, oldest first), ``mq:{E}:subs`` (a sorted set: node id, scored by the
expiry of its registration in ms of Redis's clock), ``mq:{E}:count`` (a
hash: node id, its number of local subscribers) and ``mq:{E}:pending`` (a
hash: index, ``"<node> <o|p> <line>"``: the ``one`` messages routed to a
node and not yet confirmed by it). Pub/sub channel ``mq:{E}`` (sharded:
SPUBLISH) carries one message per published batch.

Wire format (pub/sub messages and cache items, byte strings): a batch is
``"<first> <next>\\r\\n"`` then entries; an entry is ``"<index> <kind> <line>"``
where the line is the delivered line, ending in ``\\r\\n`` (a line holds no
``\\n`` of its own, so ``\\r\\n`` ends an entry). Kinds: ``a`` (delivery
all), ``c`` (all, cached), ``o<node>``/``p<node>`` (a ``one`` for that node,
``p``: cached if it comes back unwanted); a cache item is one entry (kind
``c``, or ``p`` for a ``one`` that found no subscriber anywhere). A batch of
re-routed ``one`` messages only is ``"0 0\\r\\n"`` then entries.

**A routed ``one`` is never only in flight.** Every ``one`` the scripts route
to a node is also written to ``pending`` (while it holds fewer than
:data:`MAX_PENDING` entries; past that a ``one`` is routed unrecorded, as
before this rule). The node confirms (mode ``c``: one call per topic per
burst) once it handed the message to a local subscriber; a ``one`` it cannot
deliver it returns (mode ``r``), and leaving a topic (mode ``u``) re-routes
what is still pending for it. Whenever a script finds registrations expired
(a node dead for :data:`~._backend.REGISTRATION_TTL` ms: on a publish that
picks a node, on every live node's heartbeat (mode ``h``) and on a load),
the dead nodes' pending messages are re-routed to a live node, or cached as
``p`` (consumed once) if none is left. So a ``one`` accepted by Redis
reaches a subscriber at least once; a second time only if its node died
between writing it to its subscriber and confirming it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LOAD", "MAX_PENDING", "PUBLISH"]

#: Most unconfirmed ``one`` messages recorded per topic (see the docstring).
MAX_PENDING: Final = 100_000

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_PUSH: Final = """
local function push(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
"""

# Routing, shared by PUBLISH and LOAD. KEYS: next, cache, subs, count, pending.
# ARGV[1..5]: channel, cache size, random seed, mode, a node to leave out.
_ROUTE: Final = (
    _NOW
    + _PUSH
    + f"""
local MAX_PENDING = {MAX_PENDING}
"""
    + """
local nkey, ckey, skey, hkey, pkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local chan, csize, seed = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mode, exclude = ARGV[4], ARGV[5]
local nodes, weights, total = nil, {}, 0
local out, cached = {}, {}
local first, nxt = 0, 0
local one
local function owner(value)
  local stop = string.find(value, ' ', 1, true)
  return string.sub(value, 1, stop - 1), stop
end
-- Re-route the pending one messages of the nodes in `gone` (a set).
local function reap(gone)
  if redis.call('HLEN', pkey) == 0 then return end
  local all = redis.call('HGETALL', pkey)
  for i = 1, #all, 2 do
    local node, stop = owner(all[i + 1])
    if gone[node] then
      redis.call('HDEL', pkey, all[i])
      local value = all[i + 1]
      one(all[i], string.sub(value, stop + 1, stop + 1), string.sub(value, stop + 3))
    end
  end
end
local function live()
  local dead = redis.call('ZRANGEBYSCORE', skey, '-inf', now)
  if #dead > 0 then
    redis.call('HDEL', hkey, unpack(dead))
    redis.call('ZREMRANGEBYSCORE', skey, '-inf', now)
  end
  nodes = redis.call('ZRANGE', skey, 0, -1)
  for i, node in ipairs(nodes) do
    local w = 0
    if node ~= exclude then w = tonumber(redis.call('HGET', hkey, node) or '0') or 0 end
    weights[i] = w
    total = total + w
  end
  if #dead > 0 then
    local gone = {}
    for _, node in ipairs(dead) do gone[node] = true end
    reap(gone)
  end
end
local function pick()
  if nodes == nil then live() end
  if total <= 0 then return nil end
  seed = (seed * 16807) % 2147483647
  local r = seed % total
  for i, node in ipairs(nodes) do
    r = r - weights[i]
    if r < 0 then return node end
  end
  return nil
end
one = function(idx, kind, line)
  local node = pick()
  if node then
    out[#out + 1] = idx .. ' ' .. kind .. node .. ' ' .. line
    if redis.call('HLEN', pkey) < MAX_PENDING then
      redis.call('HSET', pkey, idx, node .. ' ' .. kind .. ' ' .. line)
    end
  elseif kind == 'p' then
    cached[#cached + 1] = idx .. ' p ' .. line
  end
end
local function finish()
  if csize > 0 and #cached > 0 then
    if #cached > csize then
      -- Only the newest csize can stay: push just those.
      local newest = {}
      for i = #cached - csize + 1, #cached do newest[#newest + 1] = cached[i] end
      cached = newest
    end
    push(ckey, cached)
    redis.call('LTRIM', ckey, -csize, -1)
  end
  if #out > 0 then
    redis.call('SPUBLISH', chan, first .. ' ' .. nxt .. '\\r\\n' .. table.concat(out))
  end
end
"""
)

#: KEYS: next, cache, subs, count, pending. ARGV: channel, cache size, random
#: seed, mode, a node to leave out (the node returning, confirming, leaving
#: or renewing), then per mode:
#:
#: - ``n`` (new sends): the kinds, one letter per send, and the heads, each
#:   ended by a newline (two arguments whatever the batch's size: packing
#:   them costs the node O(1)). Returns the first index.
#: - ``r`` (returned ones): index/kind/line triples; one still pending for
#:   another node is left alone (re-routed meanwhile).
#: - ``c`` (confirmed ones): indices the node handed to its subscribers.
#: - ``u`` (the node leaves the topic): its pending ones are re-routed.
#: - ``h`` (heartbeat): the node's subscriber count and registration ttl ms.
PUBLISH: Final = (
    _ROUTE
    + """
if mode == 'n' then
  local kinds, heads = ARGV[6], ARGV[7]
  local n = #kinds
  nxt = redis.call('INCRBY', nkey, n)
  first = nxt - n
  local pos = 1
  for i = 0, n - 1 do
    local kind, idx = string.sub(kinds, i + 1, i + 1), first + i
    local stop = string.find(heads, '\\n', pos, true)
    local line = string.sub(heads, pos, stop - 1) .. idx .. '}\\r\\n'
    pos = stop + 1
    if kind == 'a' or kind == 'c' then
      local entry = idx .. ' ' .. kind .. ' ' .. line
      out[#out + 1] = entry
      if kind == 'c' then cached[#cached + 1] = entry end
    else
      one(idx, kind, line)
    end
  end
elseif mode == 'r' then
  for i = 6, #ARGV, 3 do
    local value = redis.call('HGET', pkey, ARGV[i])
    if not value or owner(value) == exclude then
      if value then redis.call('HDEL', pkey, ARGV[i]) end
      one(ARGV[i], ARGV[i + 1], ARGV[i + 2])
    end
  end
elseif mode == 'c' then
  local mine = {}
  for i = 6, #ARGV do
    local value = redis.call('HGET', pkey, ARGV[i])
    if value and owner(value) == exclude then mine[#mine + 1] = ARGV[i] end
  end
  for i = 1, #mine, 1000 do
    redis.call('HDEL', pkey, unpack(mine, i, math.min(i + 999, #mine)))
  end
  return #mine
elseif mode == 'u' then
  redis.call('ZREM', skey, exclude)
  redis.call('HDEL', hkey, exclude)
  live()
  reap({[exclude] = true})
elseif mode == 'h' then
  redis.call('ZADD', skey, now + tonumber(ARGV[7]), exclude)
  redis.call('HSET', hkey, exclude, ARGV[6])
  exclude = ''  -- re-routed ones may come back to this node
  live()
end
finish()
return first
"""
)

#: KEYS: next, cache, subs, count, pending. ARGV: channel, cache size,
#: random seed, "l", node, its subscriber count, ttl ms, "1" to take the
#: cached ``one`` messages (pending for the node from then on). Registers the
#: node (re-routing dead nodes' pending ones first); returns {next index,
#: cache items, taken ones}.
LOAD: Final = (
    _ROUTE
    + """
redis.call('ZADD', skey, now + tonumber(ARGV[7]), ARGV[5])
redis.call('HSET', hkey, ARGV[5], ARGV[6])
exclude = ''
live()
finish()
local nxt = tonumber(redis.call('GET', nkey) or '0')
local items = redis.call('LRANGE', ckey, 0, -1)
local ones = {}
if ARGV[8] == '1' then
  local keep = {}
  for _, item in ipairs(items) do
    if string.find(item, '^%d+ p ') then ones[#ones + 1] = item else keep[#keep + 1] = item end
  end
  if #ones > 0 then
    redis.call('DEL', ckey)
    push(ckey, keep)
    items = keep
    -- Taken, not yet handed out: pending for this node from now on.
    for _, item in ipairs(ones) do
      if redis.call('HLEN', pkey) >= MAX_PENDING then break end
      local stop = string.find(item, ' ', 1, true)
      local idx, line = string.sub(item, 1, stop - 1), string.sub(item, stop + 3)
      redis.call('HSET', pkey, idx, ARGV[5] .. ' p ' .. line)
    end
  end
end
return {nxt, items, ones}
"""
)
