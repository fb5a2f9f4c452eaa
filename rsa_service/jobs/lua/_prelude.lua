-- Shared by every script. Job transitions: KEYS[1] = meta hash, KEYS[2] = steps hash, KEYS[3] = events stream.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local TERMINAL = {completed = true, failed = true, cancelled = true}
local POISON_TITLE = 'Poison job'  -- the error of a job failed for exhausting its attempts (dead-lettered)
local OUTAGE_TITLE = 'Backend unavailable'  -- its backend down past the outage budget (jobs/outage.py)
local function emit(maxlen, kind, data)
  return redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'type', kind, 'data', data)
end
local function fenced(fence)
  return redis.call('HGET', KEYS[1], 'fence') == fence and redis.call('HGET', KEYS[1], 'status') == 'in_progress'
end
-- Terminal: clear the lease, then expire every job key once (and only once) the job can no longer change.
local function terminate(status, fields, ttl_s, maxlen, data)
  local t = now_ms()
  redis.call('HSET', KEYS[1], 'status', status, 'owner', '', 'lease_until_ms', 0, 'finished_ms', t, 'updated_ms', t)
  if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
  emit(maxlen, status, data)
  if tonumber(ttl_s) > 0 then
    for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl_s) end
  end
end
