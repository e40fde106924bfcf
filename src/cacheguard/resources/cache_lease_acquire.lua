-- cacheguard: take a key's cross-process lease, with a fencing token.
--
-- KEYS[1] the lease key, KEYS[2] the key's fencing counter (same hash tag).
-- ARGV[1] the lease TTL in ms, ARGV[2] the caller's owner id, ARGV[3] the counter's TTL in ms.
-- Returns the new token (> 0), or 0 when another owner holds the lease.
-- Safe to run twice: if this owner already holds the lease (a retried call whose first run
-- succeeded), its token is returned again instead of "busy".
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep and string.sub(current, sep + 1) == ARGV[2] then
    return tonumber(string.sub(current, 1, sep - 1))
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[2], 'PX', ARGV[1])
return token
