-- Number of live leases (expiry after now). Read-only.
-- KEYS[1] leases ZSET (lease id -> expiry, ms)

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Expiries are whole milliseconds: "after now" is "at least now + 1".
return redis.call("ZCOUNT", KEYS[1], now + 1, "+inf")
