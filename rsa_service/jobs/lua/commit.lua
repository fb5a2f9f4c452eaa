-- ARGV: fence, field, value, event_type, event_data, maxlen
-- Returns 1 committed, 0 already committed (the first write wins), -1 stale fence.
if not fenced(ARGV[1]) then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'updated_ms', now_ms())
emit(ARGV[6], ARGV[4], ARGV[5])
return 1
