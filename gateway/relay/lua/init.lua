--[[
init: (re)build a pool from its candidate list, for <day>
  KEYS[1] counts:<day>   KEYS[2] cooldown   KEYS[3] pool:<pid>   KEYS[4] avail:<pid>
  KEYS[5] resting:<pid>  KEYS[6] revived
  ARGV[3] day start   ARGV[4] day end   ARGV[5] <day>   ARGV[6] fingerprint
  ARGV[7], ARGV[8], ...  key_id, terms pairs: the candidates (see KEY LAYOUT)
  A pool already built for this list and day is left as it is (many callers may ask at once),
  unless it missed more revivals than a pick applies (REVIVED_MAX): then pick refuses to use it,
  so it is rebuilt.
  Returns {"ok", now}, or {"clock", now} when now is outside the day (nothing written).
  Returns {"seed", now} first when counts:<day> was never seeded (a new day, or Redis lost its
  data): the caller seeds it (see seed), then calls init again.
  Keeps INVARIANTS 2 (every candidate under its limit is filed in avail or resting, and "~rv"
  is the log's top, so no revival before the build is applied twice or missed) and 5 (the one
  call that grows with the pool).
]]
local function init()
  clock()
  local day_start, day_end = tonumber(ARGV[3]), tonumber(ARGV[4])
  if now < day_start or now >= day_end then
    return {'clock', now}
  end
  local counts, cooldown, meta, avail, resting, revived = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
  if redis.call('HEXISTS', counts, SEEDED_FIELD) == 0 then
    return {'seed', now} -- a new day, or Redis lost its data: today's counts come first
  end
  local built, seen, top = pool_state(meta, revived, ARGV[6], ARGV[5])
  -- Built for this list and day, and with no more revivals to apply than a pick applies (else
  -- every pick would answer "init" again and again): another caller built it just now.
  if built and (top <= seen or redis.call('ZCOUNT', revived, '(' .. ms(seen), ms(top)) <= REVIVED_MAX) then
    return {'ok', now}
  end
  redis.call('DEL', meta, avail, resting)
  local ttl = ms(day_end + DAY_MS - now)
  redis.call('HSET', meta, FP_FIELD, ARGV[6], DAY_FIELD, ARGV[5], RV_FIELD, ms(top)) -- `revived` is as read
  for first = 7, #ARGV, 2 * CHUNK do
    local last = math.min(#ARGV, first + 2 * CHUNK - 1)
    local ids = {}
    for i = first, last, 2 do
      ids[#ids + 1] = ARGV[i]
    end
    redis.call('HSET', meta, unpack(ARGV, first, last))
    local c = redis.call('HMGET', counts, unpack(ids))
    local e = redis.call('HMGET', cooldown, unpack(ids))
    local ready, cooling = {}, {}
    for i = 1, #ids do
      local count, limit, ends = tonumber(c[i]) or 0, terms(ARGV[first + 2 * i - 1]), tonumber(e[i]) or 0
      if count < limit then
        if ends > now then
          cooling[#cooling + 1] = ms(ends)
          cooling[#cooling + 1] = ids[i]
        else
          ready[#ready + 1] = count
          ready[#ready + 1] = ids[i]
        end
      end
    end
    if #ready > 0 then
      redis.call('ZADD', avail, unpack(ready))
    end
    if #cooling > 0 then
      redis.call('ZADD', resting, unpack(cooling))
    end
  end
  for _, key in ipairs({meta, avail, resting}) do
    redis.call('PEXPIRE', key, ttl)
  end
  return {'ok', now}
end
