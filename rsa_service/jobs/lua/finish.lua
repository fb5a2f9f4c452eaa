-- ARGV: fence, status, result_json, error_json, maxlen, ttl_s. Returns the job's tenant once finished (its
-- unfinished-job count drops), -1 stale fence.
-- Idempotent: a retry after a lost reply (Redis restarted, connection dropped) finds its own finish and succeeds.
if redis.call('HGET', KEYS[1], 'fence') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == ARGV[2] then
  return redis.call('HGET', KEYS[1], 'tenant') or ''
end
if not fenced(ARGV[1]) then return -1 end
local fields = {}
if ARGV[3] ~= '' then table.insert(fields, 'result'); table.insert(fields, ARGV[3]) end
if ARGV[4] ~= '' then table.insert(fields, 'error'); table.insert(fields, ARGV[4]) end
local data = cjson.encode({status = ARGV[2]})
if ARGV[3] ~= '' then data = ARGV[3] elseif ARGV[4] ~= '' then data = ARGV[4] end
terminate(ARGV[2], fields, ARGV[6], ARGV[5], data)
return redis.call('HGET', KEYS[1], 'tenant') or ''
