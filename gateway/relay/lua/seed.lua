--[[
seed: today's counts from PostgreSQL, before any pool is built for the day
  KEYS[1] counts:<day>   ARGV[3] day end   ARGV[4], ARGV[5], ...  key_id, count pairs
  Each count is raised to the one given (never lowered); "~seeded" marks the hash. Returns {"ok", now}.
  Keeps INVARIANTS 1 across a loss of Redis' data: counts stay the truth, a spent key stays spent.
]]
local function seed()
  clock()
  -- Today's counts as PostgreSQL has them (committed calls, plus what the caller has not flushed
  -- yet), where Redis has fewer: a count only ever rises here, so seeding twice changes nothing.
  local counts, day_end = KEYS[1], tonumber(ARGV[3])
  for i = 4, #ARGV - 1, 2 do
    local n = tonumber(ARGV[i + 1])
    if (tonumber(redis.call('HGET', counts, ARGV[i])) or 0) < n then
      redis.call('HSET', counts, ARGV[i], n)
    end
  end
  redis.call('HSET', counts, SEEDED_FIELD, 1)
  redis.call('PEXPIRE', counts, ms(day_end + DAY_MS - now))
  return {'ok', now}
end
