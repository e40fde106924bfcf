-- cacheward: read an entry unless one of its tags (or its function's cache_clear) was
-- invalidated after it was made, in one round trip.
--
-- KEYS[1] the entry's key, KEYS[2..] the marks of its tags (see cacheward._core.tags).
-- Returns the stored bytes, or false (nil to the client) when there are none or a mark fences
-- them: the entry's stamp (the lease token its rebuild took, at byte 37 of the envelope, else
-- its `created` stamp at byte 5 in microseconds) is not above the mark. Bytes that are not an
-- envelope are returned as they are (the client refuses them). Read-only: safe to run twice.
local entry = redis.call('GET', KEYS[1])
if not entry or #KEYS < 2 then
  return entry
end
if string.len(entry) >= 48 and string.byte(entry, 1) == 199 and string.byte(entry, 2) == 1 then
  local stamp = struct.unpack('>d', entry, 37)
  if stamp <= 0 then
    stamp = struct.unpack('>d', entry, 5) * 1000000
  end
  for i = 2, #KEYS do
    local mark = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    if stamp <= mark then
      return false
    end
  end
end
return entry
