-- ARGV: result_json, maxlen, ttl_s. cancelling → cancelled, by whoever notices first; keeps partial steps.
-- Returns {status after the call, 1 if this call settled it, tenant}.
local status = redis.call('HGET', KEYS[1], 'status')
local tenant = redis.call('HGET', KEYS[1], 'tenant') or ''
if status ~= 'cancelling' then return {status or 'missing', 0, tenant} end
local fields = {}
if ARGV[1] ~= '' then fields = {'result', ARGV[1]} end
terminate('cancelled', fields, ARGV[3], ARGV[2], ARGV[1] ~= '' and ARGV[1] or cjson.encode({status = 'cancelled'}))
return {'cancelled', 1, tenant}
