--[[
finish: a call on a key with a concurrency or token cap ended (served, failed or cancelled)
  KEYS[1] cooldown   KEYS[2] revived   KEYS[3] pool:<pid>
  ARGV[3] key_id     ARGV[4] request_id   ARGV[5] tokens it used (prompt + completion, as reported)
  Frees its slot in flight (max_concurrent) and counts its tokens in the key's 60-second window
  (tpm_limit). Tokens are only known at the end, so calls in flight when the window fills are
  over it by at most what they use. Returns 1 when a slot was freed, else 0.
  Keeps INVARIANTS 6: a freed slot is logged in `revived`, so pools find the key again at once.
]]
local function finish()
  clock()
  based(KEYS[1])
  local key_id, tokens = ARGV[3], tonumber(ARGV[5]) or 0
  local _, caps = terms(redis.call('HGET', KEYS[3], key_id))
  local freed = redis.call('ZREM', key_part('kfly', key_id), ARGV[4])
  if freed == 1 then
    revive(KEYS[2], key_id)
  end
  if caps and caps.tpm > 0 and tokens > 0 then
    local toks, sum = key_part('ktok', key_id), key_part('ktoksum', key_id)
    redis.call('ZADD', toks, ms(now), ARGV[4] .. ' ' .. ms(tokens))
    redis.call('INCRBY', sum, tokens)
    redis.call('PEXPIRE', toks, 2 * MINUTE_MS)
    redis.call('PEXPIRE', sum, 2 * MINUTE_MS)
  end
  return freed
end
