--[[
trial_ok: the trial request succeeded: end probation and the trial lease
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    KEYS[4] revived    ARGV[3] key_id
  Returns 1 when a trial was ended, else 0. Reads no time.
  Keeps INVARIANTS 2: the key is logged in `revived`, so every pool brings it back from resting
  now rather than when its (trial lease) cooldown would have ended.
]]
local function trial_ok()
  local key_id = ARGV[3]
  local lease = redis.call('HGET', KEYS[2], key_id)
  -- "0" means no trial is in flight (a failure came after it): then the failure stands.
  if not lease or lease == '0' then
    return 0
  end
  redis.call('HDEL', KEYS[2], key_id)
  if redis.call('HGET', KEYS[1], key_id) == lease then
    redis.call('HDEL', KEYS[1], key_id)
  end
  redis.call('HDEL', KEYS[3], key_id, key_id .. ':since', key_id .. ':auth')
  revive(KEYS[4], key_id)
  return 1
end
