-- Takes one connection lease for a mailbox if fewer than the effective limit are live.
-- KEYS[1] leases ZSET (lease id -> expiry, ms), KEYS[2] concurrency HASH (level, changedAt)
-- ARGV[1] limit, ARGV[2] ttlMs, ARGV[3] coolDownMs, ARGV[4] new lease id
-- Returns the lease id, or nil (false) when the effective limit is reached.

-- Redis < 5 needs this before writing after TIME; later versions always replicate effects.
if redis.replicate_commands then redis.replicate_commands() end

local function nowMs()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- After a 432 the limit is `level` from `changedAt` on, one step higher per coolDownMs, at most `limit`.
-- (Same formula in lease-reduce.lua and lease-effective-limit.lua.)
local function effectiveLimit(key, limit, coolDownMs, now)
  local state = redis.call("HMGET", key, "level", "changedAt")
  if not state[1] or not state[2] then return limit end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(limit, tonumber(state[1]) + math.floor(elapsed / coolDownMs))
end

local limit, ttlMs, coolDownMs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = nowMs()

redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
if redis.call("ZCARD", KEYS[1]) >= effectiveLimit(KEYS[2], limit, coolDownMs, now) then
  return false
end
redis.call("ZADD", KEYS[1], now + ttlMs, ARGV[4])
-- The set lives exactly as long as its longest lease.
local last = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
redis.call("PEXPIREAT", KEYS[1], last[2])
return ARGV[4]
