-- Removes a take from both windows (the message was not sent after all). Unknown ids are ignored.
-- KEYS[1] messages ZSET, KEYS[2] recipients ZSET, KEYS[3] recipient costs HASH, KEYS[4] recipient total STRING
-- ARGV[1] take id

redis.call("ZREM", KEYS[1], ARGV[1])
local cost = redis.call("HGET", KEYS[3], ARGV[1])
if not cost then return 0 end
redis.call("HDEL", KEYS[3], ARGV[1])
redis.call("ZREM", KEYS[2], ARGV[1])
if redis.call("ZCARD", KEYS[2]) == 0 then
  redis.call("DEL", KEYS[3], KEYS[4])
else
  redis.call("DECRBY", KEYS[4], cost)
end
return 1
