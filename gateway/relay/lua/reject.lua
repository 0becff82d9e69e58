--[[
reject: a relay key's 401/403 (its base URL is another pool, whose "unauthorized" is usually its
quota or a passing error): cool the key, doubling each time, and say when it has been refused
through enough cooldowns in a row to be disabled
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    (KEYS[4] revived: unused)
  ARGV[3] key_id      ARGV[4] first cooldown ms    ARGV[5] longest cooldown ms
  ARGV[6] cooldowns before the key is disabled
  The count is fails' key_id..":auth"; a passed trial (trial_ok) or a clear forgets it. The key
  goes on probation, so once a cooldown ends one trial request decides. A refusal of a call picked
  before the key cooled down (it still cools, and no trial is in flight) changes nothing.
  Returns {cooldowns in a row, disable (0|1)}
  Keeps INVARIANTS 1: only the truth changes, as in fail.
]]
local function reject()
  clock()
  local key_id = ARGV[3]
  local field = key_id .. ':auth'
  local cooldowns = tonumber(redis.call('HGET', KEYS[3], field)) or 0
  local trial = tonumber(redis.call('HGET', KEYS[2], key_id))
  local cooling = (tonumber(redis.call('HGET', KEYS[1], key_id)) or 0) > now
  if cooling and (trial or 0) == 0 then
    return {cooldowns, 0}
  end
  if cooldowns >= tonumber(ARGV[6]) then
    return {cooldowns, 1}
  end
  local ms_for = math.min(tonumber(ARGV[4]) * 2 ^ cooldowns, tonumber(ARGV[5]))
  cool_until(KEYS[1], key_id, now + ms_for)
  redis.call('HSET', KEYS[2], key_id, 0)
  redis.call('HSET', KEYS[3], field, cooldowns + 1)
  return {cooldowns + 1, 0}
end
