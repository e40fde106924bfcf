-- cacheward: store a cache entry unless that would replace a newer one, and (for a lease
-- holder) release the key's lease, in one round trip.
--
-- KEYS[1] the entry's key, KEYS[2] its lease key, KEYS[3] its invalidation mark (same hash
-- tag, so the same slot; see cache_invalidate.lua), KEYS[4..] the marks of the entry's tags
-- (optional; see cache_tags.lua): a tag invalidated after the lease was taken (or the entry
-- made) fences the write just as the key's own mark does.
-- ARGV[1] the envelope ('': nothing to store), ARGV[2] its TTL in ms, ARGV[3] the fencing
-- token ('0': unfenced), ARGV[4] the entry's `created` stamp, ARGV[5] the lease value the writer
-- would hold, ARGV[6] '1' to release that lease, ARGV[7] how long (ms) a released lease says
-- "no value is coming" when there was nothing to store, ARGV[8] the largest clock skew
-- trusted, in seconds.
-- Returns {stored, released, fenced}: 1/0 each (fenced: refused because of the mark). Safe to
-- run twice: a re-run stores the same bytes and
-- finds nothing more to release.
--
-- The envelope header (see _serialize.py) holds `created` at byte 5 and the writer's fencing
-- token at byte 37, both big-endian doubles. The stored bytes are not verified here (no CRC or
-- HMAC in Lua), so their `created` is trusted only up to the server's clock plus the skew: a
-- corrupt or forged entry claiming a later `created` is overwritten, not obeyed.
local token = ARGV[3]
local holds = token ~= '0' and redis.call('GET', KEYS[2]) == ARGV[5]
local stored = 0
-- Fenced by an invalidation (or a write of a value) that came after this writer's lease was
-- taken, or, for an unfenced write, after its entry was made: the value is older than the data.
local mark = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
for i = 4, #KEYS do
  mark = math.max(mark, tonumber(redis.call('GET', KEYS[i]) or '0') or 0)
end
local fenced
if token ~= '0' then
  fenced = tonumber(token) <= mark
else
  fenced = tonumber(ARGV[4]) * 1000000 <= mark
end
if ARGV[1] ~= '' and not fenced then
  local newer = false
  if not holds then
    local old = redis.call('GET', KEYS[1])
    if old and string.len(old) >= 48 and string.byte(old, 1) == 199
        and string.byte(old, 2) == 1 then
      local old_created = struct.unpack('>d', old, 5)
      local old_token = struct.unpack('>d', old, 37)
      local time = redis.call('TIME')
      local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
      if old_created <= now + tonumber(ARGV[8]) then
        newer = old_created >= tonumber(ARGV[4])
          or (token ~= '0' and old_token >= tonumber(token))
      end
    end
  end
  if not newer then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    stored = 1
  end
end
local released = 0
if holds and ARGV[6] == '1' then
  if ARGV[1] == '' then
    redis.call('SET', KEYS[2], '0:none', 'PX', ARGV[7])
  else
    redis.call('DEL', KEYS[2])
  end
  released = 1
end
return {stored, released, fenced and ARGV[1] ~= '' and 1 or 0}
