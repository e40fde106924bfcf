-- cacheward: take a key's cross-process lease and read its entry, in one round trip.
--
-- KEYS[1] the lease key, KEYS[2] the key's fencing counter, KEYS[3] the entry's key (one hash
-- tag, so one slot), KEYS[4..] the marks of the entry's tags (optional; see cache_get.lua: an
-- entry they fence is treated as absent). ARGV[1] the lease TTL in ms, ARGV[2] the caller's owner id, ARGV[3] the
-- counter's TTL in ms, ARGV[4] the caller's wall clock in seconds ('0': do not look at the
-- entry's freshness, for a caller that found the stored bytes invalid).
-- Returns {token, entry}, entry being the stored bytes (or nil):
--   token > 0  the caller now holds the lease (fetch, then publish);
--   token = 0  another owner holds it (wait for its value);
--   token = -1 no lease taken: the entry claims to be fresh (use it), or the last holder said
--              that no value is coming (it could not store one): fetch without waiting.
--
-- Tokens only grow per key, even if the counter key is evicted or expires: a token is at
-- least the server's clock in microseconds, and always above the last token handed out (a
-- counter that is not a number below 2^53, which tokens never reach, is ignored).
-- A lease value that is not "<token>:<owner>" with a TTL is nobody's lease: it is taken over,
-- so garbage or a lease key without TTL cannot block a key for ever.
-- Safe to run twice: if this owner already holds the lease (a retried call whose first run
-- succeeded), its token is returned again instead of "busy".
local entry = redis.call('GET', KEYS[3])
if entry and #KEYS > 3 and string.len(entry) >= 48 and string.byte(entry, 1) == 199
    and string.byte(entry, 2) == 1 then
  local stamp = struct.unpack('>d', entry, 37)
  if stamp <= 0 then
    stamp = struct.unpack('>d', entry, 5) * 1000000
  end
  for i = 4, #KEYS do
    if stamp <= (tonumber(redis.call('GET', KEYS[i]) or '0') or 0) then
      entry = false
      break
    end
  end
end
if entry and ARGV[4] ~= '0' and string.len(entry) >= 48 and string.byte(entry, 1) == 199
    and string.byte(entry, 2) == 1 then
  if struct.unpack('>d', entry, 13) > tonumber(ARGV[4]) then
    return {-1, entry}
  end
end
local current = redis.call('GET', KEYS[1])
if current then
  if current == '0:none' then
    return {-1, entry}
  end
  local sep = string.find(current, ':', 1, true)
  local held = sep and tonumber(string.sub(current, 1, sep - 1))
  if held and held > 0 and held < 9007199254740992 then
    if string.sub(current, sep + 1) == ARGV[2] then
      return {held, entry}
    end
    if redis.call('PTTL', KEYS[1]) > 0 then
      return {0, entry}
    end
  end
end
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if last and last < 9007199254740992 and token <= last then
  token = last + 1
end
local text = string.format('%d', token)
redis.call('SET', KEYS[2], text, 'PX', ARGV[3])
redis.call('SET', KEYS[1], text .. ':' .. ARGV[2], 'PX', ARGV[1])
return {token, entry}
