-- The mailbox's connection limit right now, after any 432 cool-down. Read-only.
-- KEYS[1] concurrency HASH (level, changedAt)
-- ARGV[1] limit, ARGV[2] coolDownMs

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Same formula as in lease-acquire.lua and lease-reduce.lua.
local limit, coolDownMs = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call("HMGET", KEYS[1], "level", "changedAt")
if not state[1] or not state[2] then return limit end
local elapsed = math.max(0, now - tonumber(state[2]))
return math.min(limit, tonumber(state[1]) + math.floor(elapsed / coolDownMs))
