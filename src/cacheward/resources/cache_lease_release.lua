-- cacheward: release a lease if the caller still holds it (token and owner match).
--
-- KEYS[1] the lease key; ARGV[1] the lease value "<token>:<owner>".
-- Returns 1 when released, 0 when the lease had expired or belongs to someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
