-- What the windows of a mailbox hold right now. Read-only: expired entries are left for the next take.
-- KEYS[1] takes ZSET, KEYS[2] recipient costs HASH, KEYS[3] recipient total STRING (as budget-take.lua)
-- ARGV[1] minuteMs, ARGV[2] dayMs
-- Returns {messagesLastMinute, recipientsLastDay}.

local BATCH = 500

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minuteMs, dayMs = tonumber(ARGV[1]), tonumber(ARGV[2])

-- Times are whole milliseconds: "after now - window" is "at least now - window + 1".
local messages = redis.call("ZCOUNT", KEYS[1], now - minuteMs + 1, "+inf")

local recipients = tonumber(redis.call("GET", KEYS[3]) or "0")
local offset = 0
while true do
  local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now - dayMs, "LIMIT", offset, BATCH)
  if #ids == 0 then break end
  local costs = redis.call("HMGET", KEYS[2], unpack(ids))
  for i = 1, #costs do recipients = recipients - (tonumber(costs[i]) or 0) end
  if #ids < BATCH then break end
  offset = offset + BATCH
end
return {messages, math.max(0, recipients)}
