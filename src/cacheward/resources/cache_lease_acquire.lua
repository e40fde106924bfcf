-- cacheward: take a key's cross-process lease, with a fencing token.
--
-- KEYS[1] the lease key, KEYS[2] the key's fencing counter, KEYS[3] the entry's key (one hash
-- tag, so one slot). ARGV[1] the lease TTL in ms, ARGV[2] the caller's owner id, ARGV[3] the
-- counter's TTL in ms.
-- Returns {token, entry}: token > 0 when the caller now holds the lease (0 when another owner
-- does), and the stored entry's bytes (or nil), so the caller can see in the same round trip
-- that a value arrived just before it took the lease.
--
-- Tokens only grow per key, even if the counter key is evicted or expires: a token is at
-- least the server's clock in microseconds, and always above the last token handed out.
-- Safe to run twice: if this owner already holds the lease (a retried call whose first run
-- succeeded), its token is returned again instead of "busy".
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep and string.sub(current, sep + 1) == ARGV[2] then
    return {tonumber(string.sub(current, 1, sep - 1)), redis.call('GET', KEYS[3])}
  end
  return {0, false}
end
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if token <= last then
  token = last + 1
end
local text = string.format('%d', token)
redis.call('SET', KEYS[2], text, 'PX', ARGV[3])
redis.call('SET', KEYS[1], text .. ':' .. ARGV[2], 'PX', ARGV[1])
return {token, redis.call('GET', KEYS[3])}
