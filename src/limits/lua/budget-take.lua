-- Takes one message and `recipients` from the sliding windows of a mailbox, both or neither: one message
-- per minute window, `recipients` per day window. An entry taken at time s counts while s > now - window.
-- One ZSET holds every take for both windows (those of the last minute are the minute's messages): a take
-- costs one ZADD, not two, and the day's purge clears the minute's old entries too.
-- KEYS[1] takes ZSET (take id -> ms), KEYS[2] recipient costs HASH (take id -> recipients),
-- KEYS[3] recipient total STRING
-- ARGV[1] take id, ARGV[2] recipients, ARGV[3] messagesPerMinute, ARGV[4] recipientsPerDay (0: unlimited),
-- ARGV[5] minuteMs, ARGV[6] dayMs
-- Returns {1} when taken, else {0, budget, retryInMs, used, limit}; retryInMs -1 means it never fits.
-- With both budgets unlimited nothing is read or recorded: {1} at once.

if redis.replicate_commands then redis.replicate_commands() end

-- Ids per HMGET/HDEL/ZREM call: stays below the limit on unpack() arguments.
local BATCH = 500

local perMinute, perDay = tonumber(ARGV[3]), tonumber(ARGV[4])
if perMinute == 0 and perDay == 0 then return {1} end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, wanted = ARGV[1], tonumber(ARGV[2])
local minuteMs, dayMs = tonumber(ARGV[5]), tonumber(ARGV[6])

-- Drops expired entries and subtracts their costs from the running total; returns the total.
local function purgeRecipients()
  local removed = 0
  while true do
    local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now - dayMs, "LIMIT", 0, BATCH)
    if #ids == 0 then break end
    local costs = redis.call("HMGET", KEYS[2], unpack(ids))
    for i = 1, #costs do removed = removed + (tonumber(costs[i]) or 0) end
    redis.call("HDEL", KEYS[2], unpack(ids))
    redis.call("ZREM", KEYS[1], unpack(ids))
    if #ids < BATCH then break end
  end
  if redis.call("ZCARD", KEYS[1]) == 0 then
    redis.call("DEL", KEYS[2], KEYS[3])
    return 0
  end
  if removed > 0 then return redis.call("DECRBY", KEYS[3], removed) end
  return tonumber(redis.call("GET", KEYS[3]) or "0")
end

-- Times are whole milliseconds: "after now - window" is "at least now - window + 1".
local minuteStart = now - minuteMs + 1

-- The messages of the minute window (the takes of the last minute).
local function messagesInMinute()
  return redis.call("ZCOUNT", KEYS[1], minuteStart, "+inf")
end

-- ms until the message window has room for one more: when the entry that must go last expires.
local function messagesRetryIn(used)
  local entry = redis.call("ZRANGEBYSCORE", KEYS[1], minuteStart, "+inf", "WITHSCORES", "LIMIT", used - perMinute, 1)
  return tonumber(entry[2]) + minuteMs - now
end

-- ms until enough recipients have left the day window: walks the oldest entries until their costs cover it.
local function recipientsRetryIn(used)
  local excess = used + wanted - perDay
  -- Usually a few entries suffice: read a small page first, larger ones after.
  local freed, start, page = 0, 0, 16
  while true do
    local entries = redis.call("ZRANGE", KEYS[1], start, start + page - 1, "WITHSCORES")
    -- Only if the total disagrees with the entries: wait a whole window rather than say "never".
    if #entries == 0 then return dayMs end
    local ids = {}
    for i = 1, #entries, 2 do ids[#ids + 1] = entries[i] end
    local costs = redis.call("HMGET", KEYS[2], unpack(ids))
    for i = 1, #ids do
      freed = freed + (tonumber(costs[i]) or 0)
      if freed >= excess then return tonumber(entries[2 * i]) + dayMs - now end
    end
    start = start + page
    page = math.min(page * 2, BATCH)
  end
end

local recipients = purgeRecipients()
local messages = messagesInMinute()

if perDay > 0 and wanted > perDay then return {0, "recipientsPerDay", -1, recipients, perDay} end

local messagesWait = false
if perMinute > 0 and messages + 1 > perMinute then messagesWait = messagesRetryIn(messages) end
local recipientsWait = false
if perDay > 0 and recipients + wanted > perDay then recipientsWait = recipientsRetryIn(recipients) end

-- Both full: report the one that frees later, the earliest moment the request can fit.
if recipientsWait and (not messagesWait or recipientsWait > messagesWait) then
  return {0, "recipientsPerDay", recipientsWait, recipients, perDay}
end
if messagesWait then return {0, "messagesPerMinute", messagesWait, messages, perMinute} end

-- An id still recorded is replaced: its old cost leaves the total so the total stays exact.
local previous = redis.call("HGET", KEYS[2], id)
if previous then redis.call("DECRBY", KEYS[3], previous) end
redis.call("ZADD", KEYS[1], now, id)
redis.call("HSET", KEYS[2], id, wanted)
redis.call("INCRBY", KEYS[3], wanted)
-- The newest entry is now: once a day has passed without a write, nothing in the keys counts.
redis.call("PEXPIRE", KEYS[1], dayMs)
redis.call("PEXPIRE", KEYS[2], dayMs)
redis.call("PEXPIRE", KEYS[3], dayMs)
return {1}
