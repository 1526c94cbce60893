-- Removes a take from the windows (the message was not sent after all). Unknown ids are ignored.
-- KEYS[1] takes ZSET, KEYS[2] recipient costs HASH, KEYS[3] recipient total STRING
-- ARGV[1] take id

local cost = redis.call("HGET", KEYS[2], ARGV[1])
if not cost then return 0 end
redis.call("HDEL", KEYS[2], ARGV[1])
redis.call("ZREM", KEYS[1], ARGV[1])
if redis.call("ZCARD", KEYS[1]) == 0 then
  redis.call("DEL", KEYS[2], KEYS[3])
else
  redis.call("DECRBY", KEYS[3], cost)
end
return 1
