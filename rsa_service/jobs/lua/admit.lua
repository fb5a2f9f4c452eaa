-- KEYS: a tenant's active set (job id → admission ms), its state hash (one hash tag: the tenant's).
-- ARGV: job_id, limit (0: none), prune_every_ms, build_timeout_ms.
-- Returns 1 admitted (the id now counts), 0 refused at the limit, -1 refused but the caller should drop stale
-- members and ask again (at most once per prune_every_ms), -2 the set was never built from the tenant's jobs: the
-- caller builds it and asks again (one caller at a time; the others are counted against the set as it stands).
local t = now_ms()
local limit = tonumber(ARGV[2])
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('HEXISTS', KEYS[2], 'built_ms') == 0 and
      t - tonumber(redis.call('HGET', KEYS[2], 'building_ms') or '0') > tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[2], 'building_ms', t)
    return -2
  end
  if redis.call('ZCARD', KEYS[1]) >= limit then
    if t - tonumber(redis.call('HGET', KEYS[2], 'pruned_ms') or '0') < tonumber(ARGV[3]) then return 0 end
    redis.call('HSET', KEYS[2], 'pruned_ms', t)
    return -1
  end
end
redis.call('ZADD', KEYS[1], t, ARGV[1])
return 1
