-- ARGV: owner, lease_ms, max_attempts, steal_from, maxlen, ttl_s, format_version
-- Returns {outcome, ...}: claimed fence attempts lease_until | busy owner lease_until | terminal status tenant
-- | poisoned attempts tenant | newer version | missing
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if version > tonumber(ARGV[7]) then return {'newer', tostring(version)} end
local tenant = redis.call('HGET', KEYS[1], 'tenant') or ''
if TERMINAL[status] then return {'terminal', status, tenant} end
local t = now_ms()
local owner = redis.call('HGET', KEYS[1], 'owner')
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms'))
if owner ~= '' and lease > t and owner ~= ARGV[1] and owner ~= ARGV[4] then
  return {'busy', owner, tostring(lease)}
end
if status == 'cancelling' then
  terminate('cancelled', {}, ARGV[6], ARGV[5], cjson.encode({status = 'cancelled'}))
  return {'terminal', 'cancelled', tenant}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[3]) then
  local err = cjson.encode({title = POISON_TITLE, detail = 'abandoned by ' .. (attempts - 1) ..
    ' workers without finishing; not retried again', status = 500})
  terminate('failed', {'error', err}, ARGV[6], ARGV[5], cjson.encode({status = 'failed', error = cjson.decode(err)}))
  return {'poisoned', tostring(attempts), tenant}
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local lease_until = t + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until_ms', lease_until, 'status', 'in_progress', 'updated_ms', t,
  'v', ARGV[7])
redis.call('HSETNX', KEYS[1], 'started_ms', t)
emit(ARGV[5], 'claimed', cjson.encode({owner = ARGV[1], fence = fence, attempt = attempts}))
return {'claimed', tostring(fence), tostring(attempts), tostring(lease_until)}
