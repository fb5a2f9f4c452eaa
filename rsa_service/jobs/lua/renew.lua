-- ARGV: fence, lease_ms. Returns the new lease end, or 0 when the fence moved (cancelled or taken over).
if not fenced(ARGV[1]) then return 0 end
local lease_until = now_ms() + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until_ms', lease_until)
return lease_until
