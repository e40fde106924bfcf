-- Take one token from a shared token bucket, at most once per request id.
--
-- KEYS[1]  the bucket (a hash: tokens, ts)          e.g. cacheward:bucket:{db}
-- KEYS[2]  this request's id key (same hash slot)   e.g. cacheward:bucket:{db}:req:<id>
-- ARGV[1]  rate (tokens per second)
-- ARGV[2]  burst (the most tokens held)
-- ARGV[3]  max_wait (seconds the caller can wait for a token)
-- ARGV[4]  how long to remember the request id (milliseconds)
--
-- Returns "0" (a token was taken), "w:<seconds>" (no token now; one is expected in that
-- long, within max_wait: sleep and ask again) or "r:<seconds>" (refused: the token is
-- further off than max_wait). Time is the server's, so every process shares one clock.
--
-- A timed-out call has an unknown outcome and a client may send it again: the answer is
-- stored under the request id, and a repeat returns it without taking a second token.
local done = redis.call('GET', KEYS[2])
if done then
  return done
end

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end

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
-- An untouched bucket refills to burst within burst / rate seconds: after that, a missing
-- key means the same as a full one.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
redis.call('SET', KEYS[2], result, 'PX', tonumber(ARGV[4]))
return result
