-- cacheward: invalidate tags (or a function's whole namespace: cache_clear) in O(1) writes per
-- tag, and announce it on the backplane, in one round trip.
--
-- KEYS[1..] the marks of the tags (see cacheward._core.tags). ARGV[1] the marks' TTL in ms
-- (no entry lives longer: the layer caps entries' TTL at it), ARGV[2] a channel to announce
-- on ('': none), ARGV[3] the message.
-- Each mark is raised to the server's clock in microseconds, and always above its last value:
-- every entry carrying the tag that was made before (or by a rebuild whose lease was taken
-- before) has a stamp at or below it and is a miss from now on (cache_get.lua,
-- cache_lease_acquire.lua), and cache_put.lua refuses to store such an entry. Returns the
-- highest mark. Safe to run twice: a re-run raises the marks again.
local now = redis.call('TIME')
local base = tonumber(now[1]) * 1000000 + tonumber(now[2])
local highest = 0
for i = 1, #KEYS do
  local token = base
  local last = tonumber(redis.call('GET', KEYS[i]) or '0')
  if last and last < 9007199254740992 and token <= last then
    token = last + 1
  end
  redis.call('SET', KEYS[i], string.format('%d', token), 'PX', ARGV[1])
  if token > highest then
    highest = token
  end
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return highest
