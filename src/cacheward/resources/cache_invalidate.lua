-- cacheward: invalidate a key (or write a value over it) and fence every lease taken before,
-- in one round trip.
--
-- KEYS[1] the entry's key, KEYS[2] its lease key, KEYS[3] its fencing counter, KEYS[4] its
-- invalidation mark (one hash tag, so one slot).
-- ARGV[1] the counter's and the mark's TTL in ms, ARGV[2] the envelope to store ('': delete),
-- ARGV[3] its TTL in ms, ARGV[4] a channel to announce on ('': none), ARGV[5] the message.
-- The announcement is a plain PUBLISH, which a Redis Cluster delivers to subscribers on every
-- node (a sharded SPUBLISH from a script must name a channel in the key's own slot, which no
-- subscriber could know in advance).
-- Returns the mark: a token above every token handed out for the key so far.
--
-- A rebuild that took its lease before this ran holds a smaller token: cache_put.lua refuses
-- to store its result (it reaches its own callers only). The lease itself is dropped, so the
-- next caller in any process takes a new one at once and fetches the new data. Safe to run
-- twice: a re-run raises the mark again and deletes (or writes) the same thing.
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if last and last < 9007199254740992 and token <= last then
  token = last + 1
end
local text = string.format('%d', token)
redis.call('SET', KEYS[3], text, 'PX', ARGV[1])
redis.call('SET', KEYS[4], text, 'PX', ARGV[1])
redis.call('DEL', KEYS[2])
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return token
