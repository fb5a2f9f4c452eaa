-- ARGV: maxlen. A job failed for a transient reason (dead-lettered as poison, or a backend outage) runs again: queued, a fresh attempt budget and wall-time start,
-- error/result/owner cleared, committed steps kept (it resumes where it stopped), the retention expiry removed.
-- The fence moves, so nothing that held the job before can write to it.
-- Returns {'requeued', tenant} | {'missing'} | {'refused', status, error title}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
local err = redis.call('HGET', KEYS[1], 'error')
local title = ''
if err and err ~= '' then title = cjson.decode(err).title or '' end
if status ~= 'failed' or (title ~= POISON_TITLE and title ~= OUTAGE_TITLE) then return {'refused', status, title} end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HDEL', KEYS[1], 'error', 'result', 'finished_ms', 'started_ms', 'progress_waiting')
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'owner', '', 'lease_until_ms', 0, 'updated_ms', now_ms())
for i = 1, 3 do redis.call('PERSIST', KEYS[i]) end
emit(ARGV[1], 'requeued', cjson.encode({status = 'queued'}))
return {'requeued', redis.call('HGET', KEYS[1], 'tenant') or ''}
