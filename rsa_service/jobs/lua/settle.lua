-- ARGV: result_json, maxlen, ttl_s. cancelling → cancelled, by whoever notices first; keeps partial steps.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'cancelling' then return status or 'missing' end
local fields = {}
if ARGV[1] ~= '' then fields = {'result', ARGV[1]} end
terminate('cancelled', fields, ARGV[3], ARGV[2], ARGV[1] ~= '' and ARGV[1] or cjson.encode({status = 'cancelled'}))
return 'cancelled'
