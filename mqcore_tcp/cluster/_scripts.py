"""The Lua scripts run in Redis: each touches the keys of one topic only (one hash tag).

Keys of topic T (``{E}`` is T's hash tag, see :mod:`._keys`): ``mq:{E}:next``
(the next index), ``mq:{E}:cache`` (the cache: a list capped at the cache
size, oldest first), ``mq:{E}:subs`` (a sorted set: node id, scored by the
expiry of its registration in ms of Redis's clock) and ``mq:{E}:count``
(a hash: node id, its number of local subscribers). Pub/sub channel
``mq:{E}`` (sharded: SPUBLISH) carries one message per published batch.

Wire format (pub/sub messages and cache items, byte strings): a batch is
``"<first> <next>\\r\\n"`` then entries; an entry is ``"<index> <kind> <line>"``
where the line is the delivered line, ending in ``\\r\\n`` (a line holds no
``\\n`` of its own, so ``\\r\\n`` ends an entry). Kinds: ``a`` (delivery
all), ``c`` (all, cached), ``o<node>``/``p<node>`` (a ``one`` for that node,
``p``: cached if it comes back unwanted); a cache item is one entry (kind
``c``, or ``p`` for a ``one`` that found no subscriber anywhere).
"""

from __future__ import annotations

from typing import Final

__all__ = ["HEARTBEAT", "LOAD", "PUBLISH"]

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

#: KEYS: next, cache, subs, count. ARGV: channel, cache size, random seed,
#: mode, a node to leave out (returns), then for mode "n" (new sends) the
#: kinds, one letter per send, and the heads, each ended by a newline (two
#: arguments whatever the batch's size: packing them costs the node O(1));
#: for mode "r" (returned ones) index/kind/line triples. Returns the first index.
PUBLISH: Final = (
    _NOW
    + _PUSH
    + """
local nkey, ckey, skey, hkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local chan, csize, seed = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mode, exclude = ARGV[4], ARGV[5]
local nodes, weights, total = nil, {}, 0
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
local out, cached = {}, {}
local first, nxt = 0, 0
local function one(idx, kind, line)
  local node = pick()
  if node then
    out[#out + 1] = idx .. ' ' .. kind .. node .. ' ' .. line
  elseif kind == 'p' then
    cached[#cached + 1] = idx .. ' p ' .. line
  end
end
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
else
  for i = 6, #ARGV, 3 do one(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
end
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
return first
"""
)

#: KEYS: next, cache, subs, count. ARGV: node, its subscriber count, ttl ms,
#: "1" to take the cached ``one`` messages. Registers the node; returns
#: {next index, cache items, taken ones}.
LOAD: Final = (
    _NOW
    + _PUSH
    + """
local nkey, ckey, skey, hkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
redis.call('ZADD', skey, now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', hkey, ARGV[1], ARGV[2])
local nxt = tonumber(redis.call('GET', nkey) or '0')
local items = redis.call('LRANGE', ckey, 0, -1)
local ones = {}
if ARGV[4] == '1' then
  local keep = {}
  for _, item in ipairs(items) do
    if string.find(item, '^%d+ p ') then ones[#ones + 1] = item else keep[#keep + 1] = item end
  end
  if #ones > 0 then
    redis.call('DEL', ckey)
    push(ckey, keep)
    items = keep
  end
end
return {nxt, items, ones}
"""
)

#: KEYS: subs, count. ARGV: node, count, ttl ms: renew the node's registration.
HEARTBEAT: Final = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)
