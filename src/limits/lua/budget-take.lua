-- Takes one message from the per-minute window and `recipients` from the per-day window of a mailbox,
-- both or neither. Sliding windows: an entry taken at time s counts while s > now - window.
-- KEYS[1] messages ZSET (take id -> ms), KEYS[2] recipients ZSET (take id -> ms),
-- KEYS[3] recipient costs HASH (take id -> recipients), KEYS[4] recipient total STRING
-- ARGV[1] take id, ARGV[2] recipients, ARGV[3] messagesPerMinute, ARGV[4] recipientsPerDay,
-- ARGV[5] minuteMs, ARGV[6] dayMs
-- Returns {1} when taken, else {0, budget, retryInMs, used, limit}; retryInMs -1 means it never fits.

if redis.replicate_commands then redis.replicate_commands() end

-- Ids per HMGET/HDEL/ZREM call: stays below the limit on unpack() arguments.
local BATCH = 500

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, wanted = ARGV[1], tonumber(ARGV[2])
local perMinute, perDay = tonumber(ARGV[3]), tonumber(ARGV[4])
local minuteMs, dayMs = tonumber(ARGV[5]), tonumber(ARGV[6])

-- Drops expired entries; returns the number of messages still in the minute window.
local function purgeMessages()
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - minuteMs)
  return redis.call("ZCARD", KEYS[1])
end

-- Drops expired entries and subtracts their costs from the running total; returns the total.
local function purgeRecipients()
  local removed = 0
  while true do
    local ids = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now - dayMs, "LIMIT", 0, BATCH)
    if #ids == 0 then break end
    local costs = redis.call("HMGET", KEYS[3], unpack(ids))
    for i = 1, #costs do removed = removed + (tonumber(costs[i]) or 0) end
    redis.call("HDEL", KEYS[3], unpack(ids))
    redis.call("ZREM", KEYS[2], unpack(ids))
    if #ids < BATCH then break end
  end
  if redis.call("ZCARD", KEYS[2]) == 0 then
    redis.call("DEL", KEYS[3], KEYS[4])
    return 0
  end
  if removed > 0 then return redis.call("DECRBY", KEYS[4], removed) end
  return tonumber(redis.call("GET", KEYS[4]) or "0")
end

-- ms until the message window has room for one more: when the entry that must go last expires.
local function messagesRetryIn(used)
  local entry = redis.call("ZRANGE", KEYS[1], used - perMinute, used - perMinute, "WITHSCORES")
  return tonumber(entry[2]) + minuteMs - now
end

-- ms until enough recipients have left the day window: walks the oldest entries until their costs cover it.
local function recipientsRetryIn(used)
  local excess = used + wanted - perDay
  -- Usually a few entries suffice: read a small page first, larger ones after.
  local freed, start, page = 0, 0, 16
  while true do
    local entries = redis.call("ZRANGE", KEYS[2], start, start + page - 1, "WITHSCORES")
    -- Only if the total disagrees with the entries: wait a whole window rather than say "never".
    if #entries == 0 then return dayMs end
    local ids = {}
    for i = 1, #entries, 2 do ids[#ids + 1] = entries[i] end
    local costs = redis.call("HMGET", KEYS[3], unpack(ids))
    for i = 1, #ids do
      freed = freed + (tonumber(costs[i]) or 0)
      if freed >= excess then return tonumber(entries[2 * i]) + dayMs - now end
    end
    start = start + page
    page = math.min(page * 2, BATCH)
  end
end

local messages = purgeMessages()
local recipients = purgeRecipients()

if wanted > perDay then return {0, "recipientsPerDay", -1, recipients, perDay} end

local messagesWait = false
if messages + 1 > perMinute then messagesWait = messagesRetryIn(messages) end
local recipientsWait = false
if recipients + wanted > perDay then recipientsWait = recipientsRetryIn(recipients) end

-- Both full: report the one that frees later, the earliest moment the request can fit.
if recipientsWait and (not messagesWait or recipientsWait > messagesWait) then
  return {0, "recipientsPerDay", recipientsWait, recipients, perDay}
end
if messagesWait then return {0, "messagesPerMinute", messagesWait, messages, perMinute} end

-- An id still recorded is replaced: its old cost leaves the total so the total stays exact.
local previous = redis.call("HGET", KEYS[3], id)
if previous then redis.call("DECRBY", KEYS[4], previous) end
redis.call("ZADD", KEYS[1], now, id)
redis.call("ZADD", KEYS[2], now, id)
redis.call("HSET", KEYS[3], id, wanted)
redis.call("INCRBY", KEYS[4], wanted)
-- The newest entry is now: once a window has passed without a write, nothing in the key counts.
redis.call("PEXPIRE", KEYS[1], minuteMs)
redis.call("PEXPIRE", KEYS[2], dayMs)
redis.call("PEXPIRE", KEYS[3], dayMs)
redis.call("PEXPIRE", KEYS[4], dayMs)
return {1}
