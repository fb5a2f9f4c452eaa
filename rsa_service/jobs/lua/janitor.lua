-- KEYS: queue, leases, pending (the global hints, one hash tag). ARGV: lease_ms, stale_pending_ms, limit.
-- Re-queue jobs whose lease expired and pending jobs whose queue hint may be lost. Each one found is re-scored
-- into the future, so the janitors of many workers push it once per period, not once each per tick.
-- Returns the ids re-queued.
local t = now_ms()
local limit = tonumber(ARGV[3])
local found = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', t, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  redis.call('ZADD', KEYS[2], t + tonumber(ARGV[1]), id)
  table.insert(found, id)
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', t - tonumber(ARGV[2]), 'LIMIT', 0, limit)
for _, id in ipairs(stale) do
  redis.call('ZADD', KEYS[3], t, id)
  table.insert(found, id)
end
if #found > 0 then redis.call('LPUSH', KEYS[1], unpack(found)) end
return found
