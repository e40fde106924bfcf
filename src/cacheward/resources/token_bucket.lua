-- Take one token from a shared token bucket, at most once per request id.
--
-- KEYS[1]  the bucket (a hash: tokens, ts)          e.g. cacheward:bucket:{db}
-- KEYS[2]  this request's id key (same hash slot)   e.g. cacheward:bucket:{db}:req:<id>
-- ARGV[1]  rate (tokens per second)
-- ARGV[2]  burst (the most tokens held)
-- ARGV[3]  max_wait (seconds the caller can wait for a token)
-- ARGV[4]  how long to remember the request id (milliseconds)
-- ARGV[5]  debt: tokens this process took from its local share while cut off, charged now
-- ARGV[6]  "1" if this process has used the bucket before: a missing bucket was then lost
--          (restart, flush, eviction) and starts empty; "0": it is new and starts full
--
-- Returns "0" (a token was taken), "w:<seconds>" (no token now; one is expected in that
-- long, within max_wait: sleep and ask again) or "r:<seconds>" (refused: the token is
-- further off than max_wait). Time is the server's, so every process shares one clock.
--
-- A timed-out call has an unknown outcome and a client may send it again: the answer is
-- stored under the request id, and a repeat returns it without taking a second token (nor
-- charging the debt twice).
local done = redis.call('GET', KEYS[2])
if done then
  return done
end

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local debt = tonumber(ARGV[5]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
-- x ~= x is NaN; anything unreadable is a bucket with no record.
if tokens == nil or ts == nil or tokens ~= tokens or ts ~= ts then
  -- A bucket lost while processes were cut off must not hand out a second burst on top of
  -- what their local shares took: only a bucket nobody has used starts full.
  if ARGV[6] == '1' then tokens = 0 else tokens = burst end
  ts = now
end
-- A stamp from the future (a failover to a server whose clock is behind, or garbage) would
-- stop the refill until that moment: read it as now.
if ts > now then
  ts = now
end
tokens = math.min(burst, tokens + (now - ts) * rate)
ts = now
-- Charged after the refill, so the debt is never lost to the burst cap; floored at one minute
-- of refill so no amount of debt (or garbage) can freeze the bucket for longer.
tokens = math.max(tokens - debt, -(burst + rate * 60))

local result
if tokens >= 1 then
  tokens = tokens - 1
  result = '0'
else
  local wait = (1 - tokens) / rate
  if wait > max_wait then
    result = 'r:' .. string.format('%.6f', wait)
  else
    result = 'w:' .. string.format('%.6f', wait)
  end
end

redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', ts))
-- Kept for a day past a full refill: the refill arithmetic makes an idle bucket read full, and
-- a key that is still there tells a lost bucket (starts empty) from an unused one.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 86400000)
redis.call('SET', KEYS[2], result, 'PX', tonumber(ARGV[4]))
return result
