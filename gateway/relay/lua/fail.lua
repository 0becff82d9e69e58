--[[
fail: count a failure (5xx, timeout); at the threshold cool the key and put it on probation
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    (KEYS[4] revived: unused)
  ARGV[3] key_id      ARGV[4] cooldown ms    ARGV[5] failures before cooldown    ARGV[6] window ms
  On probation, one failure cools the key again, unless it is still cooling from before (a late
  failure of a request picked earlier): that changes nothing.
  Returns {cooled (0|1), failures in the window}
  Keeps INVARIANTS 1: a key on probation always has a cooldown entry, so a pick that meets it
  files it in resting, and hands it out as a trial once that cooldown ends.
]]
local function fail()
  clock()
  local key_id, cooldown_ms = ARGV[3], tonumber(ARGV[4])
  local threshold, window_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
  local since_field = key_id .. ':since'
  local on_probation = tonumber(redis.call('HGET', KEYS[2], key_id))
  if on_probation then
    local cooling = (tonumber(redis.call('HGET', KEYS[1], key_id)) or 0) > now
    if on_probation == 0 and cooling then
      -- A request picked before the key cooled down failed late: the key is already cooling.
      return {0, 0}
    end
    -- The trial failed (or the key failed again right after its cooldown): cool it again at once.
    cool_until(KEYS[1], key_id, now + cooldown_ms)
    redis.call('HSET', KEYS[2], key_id, 0)
    redis.call('HDEL', KEYS[3], key_id, since_field)
    return {1, 1}
  end
  local since = tonumber(redis.call('HGET', KEYS[3], since_field))
  local failures = 1
  if since and now - since < window_ms then
    failures = (tonumber(redis.call('HGET', KEYS[3], key_id)) or 0) + 1
  else
    since = now
  end
  if failures >= threshold then
    cool_until(KEYS[1], key_id, now + cooldown_ms)
    redis.call('HSET', KEYS[2], key_id, 0)
    redis.call('HDEL', KEYS[3], key_id, since_field)
    return {1, failures}
  end
  redis.call('HSET', KEYS[3], key_id, failures, since_field, ms(since))
  return {0, failures}
end
