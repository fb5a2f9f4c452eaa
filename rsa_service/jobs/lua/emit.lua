-- ARGV: fence, event_type, event_data, maxlen. Progress that changes no state, still fenced.
if not fenced(ARGV[1]) then return false end
-- A summed round adds its prompt tokens to the progress kept in the job hash (see commit.lua). During a rolling
-- upgrade, a round that a worker of the older release sums is not counted there.
if ARGV[2] == 'round' and redis.call('HEXISTS', KEYS[1], 'progress_steps') == 1 then
  local tokens = cjson.decode(ARGV[3]).tokens
  local prompt = type(tokens) == 'table' and tonumber(tokens.prompt_tokens) or 0
  redis.call('HINCRBY', KEYS[1], 'progress_prompt_tokens', prompt)
end
-- A job waiting out a backend outage says so in its progress until the backend answers again (jobs/outage.py).
if ARGV[2] == 'waiting' then
  redis.call('HSET', KEYS[1], 'progress_waiting', cjson.decode(ARGV[3]).backend or '')
elseif ARGV[2] == 'backend_back' then
  redis.call('HDEL', KEYS[1], 'progress_waiting')
end
return emit(ARGV[4], ARGV[2], ARGV[3])
