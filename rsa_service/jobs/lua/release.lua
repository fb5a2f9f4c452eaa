-- ARGV: fence, maxlen. A draining worker hands the job back; the attempt does not count against the cap.
if not fenced(ARGV[1]) then return -1 end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'lease_until_ms', 0, 'updated_ms', now_ms())
emit(ARGV[2], 'released', cjson.encode({status = 'queued'}))
return 1
