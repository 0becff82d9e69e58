--[[
release: give back a reservation (an attempt that failed before its commit point)
  KEYS[1] counts:<day of the pick>    KEYS[2] revived    ARGV[3] key_id
  Returns the key's count after it (never below 0). Reads no time.
  Keeps INVARIANTS 2 and 3: a count that falls is logged in `revived`, so every pool files the
  key again (back into avail if it had been filed away as spent).
]]
local function release()
  local key_id = ARGV[3]
  local count = tonumber(redis.call('HGET', KEYS[1], key_id)) or 0
  if count > 0 then
    count = redis.call('HINCRBY', KEYS[1], key_id, -1)
    revive(KEYS[2], key_id)
  end
  return count
end
