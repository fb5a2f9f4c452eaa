-- ARGV: maxlen, ttl_s. Returns {status after the call, 1 if this call changed it, tenant}. A live owner is fenced
-- off and settles the job `cancelled` itself; a job with no live owner is cancelled at once.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', 0, ''} end
local tenant = redis.call('HGET', KEYS[1], 'tenant') or ''
if TERMINAL[status] or status == 'cancelling' then return {status, 0, tenant} end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms'))
if status == 'queued' or lease <= now_ms() then
  terminate('cancelled', {}, ARGV[2], ARGV[1], cjson.encode({status = 'cancelled'}))
  return {'cancelled', 1, tenant}
end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'status', 'cancelling', 'updated_ms', now_ms())
emit(ARGV[1], 'cancelling', cjson.encode({status = 'cancelling'}))
return {'cancelling', 1, tenant}
