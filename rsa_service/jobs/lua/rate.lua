-- KEYS[1]: the shared rate key. ARGV: interval_ms (1000 / rate), burst. GCRA: one key holds the theoretical
-- arrival time of the next request; every worker of the namespace draws from it.
-- Returns 0 when a request may go now (and reserves it), else the milliseconds to wait before asking again.
local t = now_ms()
local interval = tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), t)
local allow_at = tat - interval * (tonumber(ARGV[2]) - 1)
if allow_at > t then return math.ceil(allow_at - t) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - t) + 1000)
return 0
