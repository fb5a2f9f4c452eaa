-- ARGV: fence, field, value, event_type, event_data, maxlen
-- Returns 1 committed, 0 already committed (the first write wins), -1 stale fence.
if not fenced(ARGV[1]) then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'updated_ms', now_ms())
-- Progress kept in the job hash, so a status read folds no events. Counting starts at a job's first step: a job
-- whose earlier steps were committed without it keeps none, and readers fold its events instead.
if redis.call('HEXISTS', KEYS[1], 'progress_steps') == 1 or redis.call('HLEN', KEYS[2]) == 1 then
  local event = cjson.decode(ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'progress_steps', 1)
  redis.call('HINCRBY', KEYS[1], 'progress_completion_tokens', tonumber(event.completion_tokens) or 0)
  local round = tonumber(event.round) or 0
  if round > tonumber(redis.call('HGET', KEYS[1], 'progress_round') or '0') then
    redis.call('HSET', KEYS[1], 'progress_round', round)
  end
end
emit(ARGV[6], ARGV[4], ARGV[5])
return 1
