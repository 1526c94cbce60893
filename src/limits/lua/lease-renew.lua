-- Extends a live lease to now + ttlMs.
-- KEYS[1] leases ZSET (lease id -> expiry, ms)
-- ARGV[1] ttlMs, ARGV[2] lease id
-- Returns 1, or 0 when the lease had expired or was released (its slot may belong to someone else now).

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local expires = redis.call("ZSCORE", KEYS[1], ARGV[2])
if not expires then return 0 end
if tonumber(expires) <= now then
  redis.call("ZREM", KEYS[1], ARGV[2])
  return 0
end
redis.call("ZADD", KEYS[1], "XX", now + tonumber(ARGV[1]), ARGV[2])
local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
redis.call("PEXPIREAT", KEYS[1], last[2])
return 1
