-- After a 432 4.3.2: lowers the effective connection limit by one (never below 1), from now on.
-- KEYS[1] concurrency HASH (level, changedAt)
-- ARGV[1] limit, ARGV[2] coolDownMs
-- Returns the new effective limit.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, coolDownMs = tonumber(ARGV[1]), tonumber(ARGV[2])

-- Same formula as in lease-acquire.lua and lease-effective-limit.lua.
local current = limit
local state = redis.call("HMGET", KEYS[1], "level", "changedAt")
if state[1] and state[2] then
  local elapsed = math.max(0, now - tonumber(state[2]))
  current = math.min(limit, tonumber(state[1]) + math.floor(elapsed / coolDownMs))
end

local level = math.max(1, current - 1)
if level >= limit then
  redis.call("DEL", KEYS[1])
  return limit
end
redis.call("HSET", KEYS[1], "level", level, "changedAt", now)
-- Once the limit has climbed back to `limit` the state says nothing more: let Redis drop it then.
redis.call("PEXPIREAT", KEYS[1], now + (limit - level) * coolDownMs)
return level
