--[[
release: give back a reservation (an attempt that failed before its commit point)
  KEYS[1] counts:<day of the pick>    KEYS[2] revived    KEYS[3] cooldown    KEYS[4] pool:<pid>
  ARGV[3] key_id    ARGV[4] request_id
  Returns the key's count after it (never below 0). Reads no time.
  The call on the key's model today (model_daily_limits) is given back too, and its slot in
  flight (max_concurrent) freed; the minute window keeps its start: the call did start.
  Keeps INVARIANTS 2, 3 and 6: a count that falls, or a slot freed, is logged in `revived`, so
  every pool files the key again (back into avail if it had been filed away as spent or busy).
]]
local function release()
  local key_id = ARGV[3]
  local count = tonumber(redis.call('HGET', KEYS[1], key_id)) or 0
  local back = false
  if count > 0 then
    count = redis.call('HINCRBY', KEYS[1], key_id, -1)
    back = true
  end
  local _, caps = terms(redis.call('HGET', KEYS[4], key_id))
  if caps then
    based(KEYS[3])
    local day = string.match(KEYS[1], 'counts:(.*)$')
    local field = key_id .. '|' .. caps.model
    local mcounts = BASE .. 'mcounts:' .. day
    if caps.mday > 0 and (tonumber(redis.call('HGET', mcounts, field)) or 0) > 0 then
      redis.call('HINCRBY', mcounts, field, -1)
      back = true
    end
    if caps.conc > 0 and redis.call('ZREM', key_part('kfly', key_id), ARGV[4]) == 1 then
      back = true
    end
  end
  if back then
    revive(KEYS[2], key_id)
  end
  return count
end
