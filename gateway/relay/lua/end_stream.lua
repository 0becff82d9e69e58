--[[
end_stream: a stream ended: drop its lease from the user's concurrent streams
  KEYS[1] ustreams:<user_id>    ARGV[3] request_id
  Returns 1 when the lease was there, else 0. Reads no time.
]]
local function end_stream()
  return redis.call('ZREM', KEYS[1], ARGV[3])
end
