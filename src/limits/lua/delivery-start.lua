-- What a delivery needs before its first batch, in one round trip: the mailbox is not paused, the budget
-- take of budget-take.lua, and the message body (read only once the budget is taken: a mailbox whose budget
-- is spent takes a message every few seconds, and a body can be a 35 MB scan).
-- KEYS[1]..KEYS[3] and ARGV as budget-take.lua, KEYS[4] the mailbox's pause STRING, KEYS[5] the body STRING,
-- KEYS[6] the job's BullMQ lock STRING, ARGV[7] this worker's lock token ("": not checked)
-- Returns {2, pause} when paused, {3} when the body is missing, budget-take's {0, ...} when the budget is
-- spent (nothing taken in these three), {4} when the job's lock is not this worker's any more (nothing taken:
-- the job went back to the queue, or to another worker, while this one waited, e.g. for Redis to come back),
-- {5, ttl} when the body still has the expiry it is written with: its submission is not committed (Spool.commit
-- makes it permanent once Redis, and the replicas it waits for, have the job; until then the client has no 250
-- and may be sent 451, and send the message again), else {1, body} with the budget taken.

local function takeBudget()
--#include budget-take
end

if ARGV[7] ~= "" and redis.call("GET", KEYS[6]) ~= ARGV[7] then return {4} end
local pause = redis.call("GET", KEYS[4])
if pause then return {2, pause} end
local ttl = redis.call("PTTL", KEYS[5])
if ttl == -2 then return {3} end
if ttl >= 0 then return {5, ttl} end
local taken = takeBudget()
if taken[1] ~= 1 then return taken end
return {1, redis.call("GET", KEYS[5])}
