--[[
clear: forget cooldown, probation and failures (owner resumed the key, or a health check passed)
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    KEYS[4] revived    ARGV[3] key_id
  Returns 1. Reads no time.
  Keeps INVARIANTS 2: the key is logged in `revived`, so every pool files it again at once.
]]
local function clear()
  local key_id = ARGV[3]
  redis.call('HDEL', KEYS[1], key_id)
  redis.call('HDEL', KEYS[2], key_id)
  redis.call('HDEL', KEYS[3], key_id, key_id .. ':since', key_id .. ':auth')
  revive(KEYS[4], key_id)
  return 1
end
