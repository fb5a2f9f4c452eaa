-- ARGV: fence, event_type, event_data, maxlen. Progress that changes no state, still fenced.
if not fenced(ARGV[1]) then return false end
return emit(ARGV[4], ARGV[2], ARGV[3])
