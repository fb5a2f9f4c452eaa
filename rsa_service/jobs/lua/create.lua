-- ARGV: spec_json, tenant, fingerprint, maxlen, format_version, then any extra field/value pairs to keep in the hash
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = now_ms()
redis.call('HSET', KEYS[1], 'status', 'queued', 'spec', ARGV[1], 'tenant', ARGV[2], 'fingerprint', ARGV[3],
  'fence', 0, 'attempts', 0, 'owner', '', 'lease_until_ms', 0, 'created_ms', t, 'updated_ms', t, 'v', ARGV[5])
for i = 6, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
emit(ARGV[4], 'queued', cjson.encode({status = 'queued'}))
return t
