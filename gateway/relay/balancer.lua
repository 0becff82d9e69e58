--[[
balancer.lua: sharekey's atomic key balancer (key schema v4).

PURPOSE
  Pick the donated key that serves a request and reserve one of its calls for today, enforcing the
  caller's fair-use limits, in ONE script call, so that daily limits hold exactly across any number
  of gateway processes. The same script also owns the small state changes around a pick (give a
  reservation back, cool a key down, count failures, end a trial) and the reads of it, so that
  all of them use the same clock: Redis TIME plus ARGV[2].

  IMPORTANT: if you change behaviour, the key layout or a return shape, bump the schema version in
  the key prefix (BALANCER_VERSION in gateway/net/redisnames.py: "v4" -> "v5"). During a rolling deploy, old and new
  processes then keep separate state instead of misreading each other's.

KEY LAYOUT (p = the configured prefix, e.g. "sk"; one hash tag {p}, so one Redis Cluster slot)
  p:v4:{p}:counts:<YYYY-MM-DD>     hash key_id -> reservations today (calls in flight included),
                                   "~seeded" once seeded from PostgreSQL (see seed);
                                   expires one day after the day ends
  p:v4:{p}:cooldown                hash key_id -> cooling until (epoch ms); stale entries are harmless
  p:v4:{p}:probation               hash key_id -> 0: must pass one trial request before serving again;
                                   >0: a trial is in flight, its lease ends then (epoch ms)
  p:v4:{p}:fails                   hash key_id -> failures in the current window,
                                   key_id..":since" -> window start (epoch ms)
  p:v4:{p}:udaily:<YYYY-MM-DD>     hash user_id -> requests today; expires one day after the day ends
  p:v4:{p}:urpm:<YYYY-MM-DDTHH:MM> hash user_id -> requests in that minute (UTC); expires after ~2 min
  p:v4:{p}:ustreams:<user_id>      zset request_id -> stream lease end (epoch ms)
  A POOL is one candidate list (the keys serving one model for one endpoint family), named by the
  caller: <pid>. Its three keys are a cache of counts, cooldown and the list, rebuilt by `init`:
  p:v4:{p}:pool:<pid>              hash key_id -> daily limit, for every candidate (the membership);
                                   "~fp" -> the list's fingerprint, "~day" -> the day it was built
                                   for, "~rv" -> the last entry of `revived` applied
  p:v4:{p}:avail:<pid>             zset key_id -> count (the score): candidates under their limit
                                   that were not cooling when last looked at
  p:v4:{p}:resting:<pid>           zset key_id -> cooldown end as filed: candidates under their limit
                                   that were cooling when last looked at
  p:v4:{p}:revived                 zset key_id -> sequence number: keys that may be usable again (a
                                   reservation given back, a cooldown cleared, a trial passed); the
                                   latest 65,536, expires after two idle days
  p:v4:{p}:aff:<digest of user, conversation, model>   string key_id: the conversation's key
  p:v4:{p}:resp:<digest of the response id>           string "<user_id> <key_id>": who the response
                                   was made for and the key that made it (see remember)
  Pool keys expire one day after the day they were built for ends.
  <YYYY-MM-DD> is the calendar day in the configured time zone. The caller names the day and minute
  keys from its own clock and passes their bounds; the script checks them against TIME (see pick).

COMMON ARGUMENTS (every operation)
  ARGV[1]  operation: pick | init | seed | release | cool | fail | trial_ok | clear | read | end_stream | remember
  ARGV[2]  clock offset in ms, added to Redis TIME (0 in production; tests move the clock with it)
  All times below are epoch milliseconds on that clock ("now").

INVARIANTS (what makes a pick cost the same for 4 keys or 5,000)
  1. counts, cooldown and probation are the truth; the pool keys only say where to look. Every
     entry a pick takes is checked against the truth first, so a stale entry can cost a look, never
     a limit: daily limits stay exact.
  2. Every candidate under its limit is in avail or resting (or was revived and is in `revived`
     past "~rv"): "spent" is only decided from counts, and a key leaves avail only when it is
     spent (it comes back through a release) or cooling (it comes back when resting says its
     cooldown ends, or through a clear or a passed trial). So a key that is the only one left
     under its limit is found.
  3. Scores only ever lag counts: counts rise through picks of other pools sharing the key (a pick
     re-files what it finds, up to REPAIRS per pick) and fall through releases (which are logged
     in `revived` and re-filed by every pool). The key taken is the lowest-scored usable one:
     least-used, or within the lag of a few re-filings of it.
  4. A pick looks at the head of avail (BATCH entries plus the excluded ones), the due head of
     resting (DUE_MAX) and the new revivals (REVIVED_MAX): O(log n) for n candidates. An entry
     removed or re-filed is work done once, not per pick, so refusals of an all-spent or
     all-cooling pool cost the same as any pick once the entries are filed.
  5. A pool is (re)built by `init` when it is missing, was built for another day, its fingerprint
     differs from the caller's (the list changed), or it missed revivals: one extra round trip,
     O(n), once per pool per day or change.

pick: reserve a call on the least-used available key, after the caller's limits
  KEYS[1] counts:<day>   KEYS[2] cooldown   KEYS[3] probation
  KEYS[4] udaily:<day>   KEYS[5] urpm:<minute>   KEYS[6] ustreams:<user_id>
  KEYS[7] pool:<pid>     KEYS[8] avail:<pid>  KEYS[9] resting:<pid>   KEYS[10] revived
  ARGV[3]  day start      ARGV[4]  day end (exclusive): the bounds of <day> in the time zone
  ARGV[5]  minute start (exclusive end = +60000): the bounds of <minute>
  ARGV[6]  count_user: 1 = enforce and count the user's limits, 0 = skip them (a retry)
  ARGV[7]  user daily limit       ARGV[8]  user per-minute limit   (0 = unlimited)
  ARGV[9]  stream: 1 or 0         ARGV[10] user concurrent-stream limit (0 = unlimited)
  ARGV[11] user_id                ARGV[12] request_id
  ARGV[13] stream lease ms        ARGV[14] trial lease ms
  ARGV[15] <day> (the name)        ARGV[16] the candidate list's fingerprint
  ARGV[17] a random integer: the tie-break among the equally used keys at the head of avail
  ARGV[18] conversation affinity ms: how long KEYS[11] keeps the key picked now (0: not written)
  ARGV[19] reserve: 1 = reserve a call on the key picked; 0 = only choose it (count_tokens): the
           key's count and the user's day and streams are left as they are, only the user's
           minute counts (and is enforced)
  ARGV[20], ...  key ids not to pick (the ones a retry already tried)
  KEYS[11] aff:<conversation digest> (optional): string -> key_id.
  KEYS[12] resp:<response id digest> (optional): string -> "<user_id> <key_id>" (see remember).
    One made for another user than ARGV[11]: the answer is response_not_found. Else the key named
    there is taken first (KEYS[12] before KEYS[11]) when it is a member of this pool, not
    excluded, under its limit, not cooling and not on probation; else the usual least-used pick.
    KEYS[11] is then set to the key picked, for ARGV[18] ms. Both are in the one hash slot; pass
    a name that is never set to leave one out.
  Returns {outcome, key_id or "", used_today, retry_after_ms, trial (0|1), now}
    outcome: ok | exhausted | cooling | user_daily | user_rpm | user_streams | response_not_found
      | clock | init
    ok: the key with the fewest reservations among those under their limit and not cooling;
      its count was incremented (and then the user's counters, and the stream lease added), or
      with reserve = 0 only the user's minute; used_today is the key's count after it.
      A key on probation whose cooldown has ended is handed out as a trial (trial = 1): its
      cooldown and probation become now + trial lease, so no second request reaches it.
    cooling: none available, and at least one key under its limit is cooling (retry: its end).
    exhausted: every candidate is at its daily limit, cooling or not (retry: the day's end).
    response_not_found: KEYS[12] names a response made for another user (checked after the
      user's limits): nothing was counted or reserved.
    "clock": now is outside the given day or minute: nothing was read or written; the caller
    names the keys again from the returned now and calls again.
    "init": the pool must be (re)built first (see INVARIANTS 5): the caller calls `init`, then
    pick again. Nothing was counted.
  A refusal writes nothing but the re-filing of pool entries (and dropping expired stream leases).

init: (re)build a pool from its candidate list, for <day>
  KEYS[1] counts:<day>   KEYS[2] cooldown   KEYS[3] pool:<pid>   KEYS[4] avail:<pid>
  KEYS[5] resting:<pid>  KEYS[6] revived
  ARGV[3] day start   ARGV[4] day end   ARGV[5] <day>   ARGV[6] fingerprint
  ARGV[7], ARGV[8], ...  key_id, daily_limit pairs: the candidates
  A pool already built for this list and day is left as it is (many callers may ask at once).
  Returns {"ok", now}, or {"clock", now} when now is outside the day (nothing written).

  Returns {"seed", now} first when counts:<day> was never seeded (a new day, or Redis lost its
  data): the caller seeds it (see seed), then calls init again.

seed: today's counts from PostgreSQL, before any pool is built for the day
  KEYS[1] counts:<day>   ARGV[3] day end   ARGV[4], ARGV[5], ...  key_id, count pairs
  Each count is raised to the one given (never lowered); "~seeded" marks the hash. Returns {"ok", now}.

release: give back a reservation (an attempt that failed before its commit point)
  KEYS[1] counts:<day of the pick>    KEYS[2] revived    ARGV[3] key_id
  Returns the key's count after it (never below 0).

cool: cool a key down until now + ARGV[4] ms, or leave a later end as it is
  KEYS[1] cooldown    ARGV[3] key_id    ARGV[4] ms
  Returns the cooldown end.

fail: count a failure (5xx, timeout); at the threshold cool the key and put it on probation
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    (KEYS[4] revived: unused)
  ARGV[3] key_id      ARGV[4] cooldown ms    ARGV[5] failures before cooldown    ARGV[6] window ms
  On probation, one failure cools the key again, unless it is still cooling from before (a late
  failure of a request picked earlier): that changes nothing.
  Returns {cooled (0|1), failures in the window}

trial_ok: the trial request succeeded: end probation and the trial lease
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    KEYS[4] revived    ARGV[3] key_id
  Returns 1 when a trial was ended, else 0.

clear: forget cooldown, probation and failures (owner resumed the key, or a health check passed)
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    KEYS[4] revived    ARGV[3] key_id
  Returns 1.

read: a hash and the time it was read at (usage today, cooldowns left)
  KEYS[1] counts:<day> or cooldown    ARGV[3], ...  fields (none: the whole hash)
  Returns {now, values}: with fields, their values in order (nil when absent); without, the
  HGETALL list. Writes nothing.

end_stream: a stream ended: drop its lease from the user's concurrent streams
  KEYS[1] ustreams:<user_id>    ARGV[3] request_id
  Returns 1 when the lease was there, else 0.

remember: a Responses API response, the user it was made for and the key that made it
  KEYS[1] resp:<response id digest>    ARGV[3] key_id    ARGV[4] ms    ARGV[5] user_id (no spaces)
  Sets KEYS[1] to "<user_id> <key_id>" for ARGV[4] ms. Returns 1.
]]

local DAY_MS = 86400000
local MINUTE_MS = 60000

local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])

-- Numbers go to Redis as text; Lua's default "%.14g" would turn a large one into "1.7e+12".
local function ms(x)
  return string.format('%.0f', x)
end

-- Cooling is only ever extended here: a short 429 must not end a long disable or a trial lease.
local function cool_until(cooldown, key_id, ends)
  local current = tonumber(redis.call('HGET', cooldown, key_id)) or 0
  if ends > current then
    redis.call('HSET', cooldown, key_id, ms(ends))
    return ends
  end
  return current
end

-- The pools (see KEY LAYOUT). Their structures are a cache of counts, cooldown and the candidate
-- list: rebuilding them ("init") from those is always safe.
local FP_FIELD, DAY_FIELD, RV_FIELD = '~fp', '~day', '~rv'
local SEEDED_FIELD = '~seeded' -- in counts:<day>: its counts were seeded from PostgreSQL (see seed)
local BATCH = 8 -- entries looked at per turn (plus the caller's excluded keys)
local REPAIRS = 16 -- stale entries re-filed per pick, at most; then the first usable one is taken
local DUE_MAX = 64 -- cooled-down entries brought back per turn
local REVIVED_MAX = 256 -- revivals a pick applies; more since the pool last looked: rebuild it
local REVIVED_KEEP = 65536 -- revivals kept in the log
local CHUNK = 1000 -- candidates per command in init (Lua's unpack has a stack limit)

-- File a pool member where it belongs now: in avail at its count, in cooling until its cooldown
-- ends, or nowhere when it is spent for today.
local function place(counts, cooldown, avail, cooling, id, limit)
  local c = tonumber(redis.call('HGET', counts, id)) or 0
  local ends = tonumber(redis.call('HGET', cooldown, id)) or 0
  if c >= limit then
    redis.call('ZREM', avail, id)
  elseif ends > now then
    redis.call('ZREM', avail, id)
    redis.call('ZADD', cooling, ms(ends), id)
  else
    redis.call('ZADD', avail, c, id)
  end
end

-- Bring back up to DUE_MAX members whose cooldown (as filed) has ended; one whose cooldown was
-- extended since is filed again under its new end. Returns how many were looked at.
local function come_back(counts, cooldown, avail, cooling, meta)
  local due = redis.call('ZRANGEBYSCORE', cooling, '-inf', ms(now), 'LIMIT', 0, DUE_MAX)
  for i = 1, #due do
    redis.call('ZREM', cooling, due[i])
    local limit = redis.call('HGET', meta, due[i])
    if limit then
      place(counts, cooldown, avail, cooling, due[i], tonumber(limit))
    end
  end
  return #due
end

local function revived_top(revived)
  local top = redis.call('ZRANGE', revived, -1, -1, 'WITHSCORES')
  return tonumber(top[2]) or 0
end

-- Log that a key may be usable again (a reservation given back, a cooldown cleared): every pool
-- applies the log entries it has not seen before its next pick.
local function revive(revived, key_id)
  redis.call('ZADD', revived, revived_top(revived) + 1, key_id)
  redis.call('ZREMRANGEBYRANK', revived, 0, -REVIVED_KEEP - 1)
  redis.call('PEXPIRE', revived, 2 * DAY_MS)
end

if op == 'pick' then
  local day_start, day_end = tonumber(ARGV[3]), tonumber(ARGV[4])
  local minute_end = tonumber(ARGV[5]) + MINUTE_MS
  local count_user = ARGV[6] == '1'
  local reserve = ARGV[19] == '1'
  local user, request_id = ARGV[11], ARGV[12]
  local streams_limit = tonumber(ARGV[10])
  local track_stream = count_user and reserve and ARGV[9] == '1' and streams_limit > 0
  local counts, cooldown, probation = KEYS[1], KEYS[2], KEYS[3]
  local meta, avail, cooling, revived = KEYS[7], KEYS[8], KEYS[9], KEYS[10]

  -- The caller's clock chose the key names; only Redis time decides which day a call counts on.
  if now < day_start or now >= day_end or (count_user and (now < minute_end - MINUTE_MS or now >= minute_end)) then
    return {'clock', '', 0, 0, 0, now}
  end

  if count_user then
    local daily, per_minute = tonumber(ARGV[7]), tonumber(ARGV[8])
    if reserve and daily > 0 and (tonumber(redis.call('HGET', KEYS[4], user)) or 0) >= daily then
      return {'user_daily', '', 0, day_end - now, 0, now}
    end
    if per_minute > 0 and (tonumber(redis.call('HGET', KEYS[5], user)) or 0) >= per_minute then
      return {'user_rpm', '', 0, minute_end - now, 0, now}
    end
    if track_stream then
      -- A stream whose lease ran out (its process died) no longer holds a slot.
      redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ms(now))
      if not redis.call('ZSCORE', KEYS[6], request_id)
          and redis.call('ZCARD', KEYS[6]) >= streams_limit then
        return {'user_streams', '', 0, 1000, 0, now}
      end
    end
  end

  -- A response belongs to the user it was made for: another user's id is not found, here or upstream.
  local made_by = nil
  local made = KEYS[12] and redis.call('GET', KEYS[12])
  if made then
    local owner, id = string.match(made, '^(%S+) (.+)$')
    if owner ~= user then
      return {'response_not_found', '', 0, 0, 0, now}
    end
    made_by = id
  end

  -- The pool's structures must be today's, built from the caller's candidate list, and must not
  -- have missed a key given back or revived (the log keeps the latest REVIVED_KEEP).
  local state = redis.call('HMGET', meta, FP_FIELD, DAY_FIELD, RV_FIELD)
  local seen, top = tonumber(state[3]) or -1, revived_top(revived)
  if state[1] ~= ARGV[16] or state[2] ~= ARGV[15] or top < seen or top - seen >= REVIVED_KEEP then
    return {'init', '', 0, 0, 0, now}
  end
  if top > seen then
    local back = redis.call('ZRANGEBYSCORE', revived, '(' .. ms(seen), ms(top), 'LIMIT', 0, REVIVED_MAX + 1)
    if #back > REVIVED_MAX then
      return {'init', '', 0, 0, 0, now}
    end
    for i = 1, #back do
      local limit = redis.call('HGET', meta, back[i])
      if limit then
        redis.call('ZREM', cooling, back[i])
        place(counts, cooldown, avail, cooling, back[i], tonumber(limit))
      end
    end
    redis.call('HSET', meta, RV_FIELD, ms(top))
  end

  local exclude, excluded = {}, 0
  for i = 20, #ARGV do
    exclude[ARGV[i]] = true
    excluded = excluded + 1
  end
  local seed = tonumber(ARGV[17])
  local repairs = 0
  local key_id = nil
  -- Affinity: the key that produced the response this request continues (KEYS[12]), else the one
  -- that last served this conversation (KEYS[11]), when it is in this pool and can serve now.
  local function can_serve(id)
    local limit = id and not exclude[id] and tonumber(redis.call('HGET', meta, id))
    return limit and (tonumber(redis.call('HGET', counts, id)) or 0) < limit
        and (tonumber(redis.call('HGET', cooldown, id)) or 0) <= now
        and redis.call('HEXISTS', probation, id) == 0
  end
  if can_serve(made_by) then
    key_id = made_by
  elseif KEYS[11] then
    local id = redis.call('GET', KEYS[11])
    if can_serve(id) then
      key_id = id
    end
  end
  while not key_id do
    local moved = come_back(counts, cooldown, avail, cooling, meta)
    local batch = redis.call('ZRANGE', avail, 0, BATCH + excluded - 1, 'WITHSCORES')
    local n = #batch / 2
    local changed = false
    if n > 0 then
      -- Ties go at random: start at a random one of the entries sharing the lowest score.
      local ties = 1
      while ties < n and batch[2 * ties + 2] == batch[2] do
        ties = ties + 1
      end
      local start = seed % ties
      for j = 0, n - 1 do
        local i = (start + j) % n + 1
        local id, score = batch[2 * i - 1], tonumber(batch[2 * i])
        if not exclude[id] then
          local c = tonumber(redis.call('HGET', counts, id)) or 0
          local limit = tonumber(redis.call('HGET', meta, id)) or 0
          local ends = tonumber(redis.call('HGET', cooldown, id)) or 0
          if c >= limit then
            redis.call('ZREM', avail, id) -- spent for today (a release brings it back)
            changed = true
          elseif ends > now then
            redis.call('ZREM', avail, id)
            redis.call('ZADD', cooling, ms(ends), id)
            changed = true
          elseif c ~= score and repairs < REPAIRS then
            -- Another pool used this key since: put it where its count says, and look again.
            redis.call('ZADD', avail, c, id)
            repairs = repairs + 1
            changed = true
            break
          else
            key_id = id
            break
          end
        end
      end
    end
    -- Every turn that does not pick removes, re-files or brings back at least one entry.
    if key_id or (not changed and moved == 0) then
      break
    end
  end

  if not key_id then
    for _ = 1, REPAIRS do
      local soonest = redis.call('ZRANGE', cooling, 0, 0, 'WITHSCORES')
      if not soonest[2] then
        break
      end
      local filed = tonumber(soonest[2])
      local ends = tonumber(redis.call('HGET', cooldown, soonest[1])) or 0
      if ends <= filed then
        return {'cooling', '', 0, math.max(1, filed - now), 0, now}
      end
      redis.call('ZADD', cooling, ms(ends), soonest[1]) -- extended since it was filed
    end
    local soonest = redis.call('ZRANGE', cooling, 0, 0, 'WITHSCORES')
    if soonest[2] then
      return {'cooling', '', 0, math.max(1, tonumber(soonest[2]) - now), 0, now}
    end
    return {'exhausted', '', 0, day_end - now, 0, now}
  end

  local used
  if reserve then
    used = redis.call('HINCRBY', counts, key_id, 1)
    redis.call('PEXPIRE', counts, ms(day_end + DAY_MS - now))
  else
    used = tonumber(redis.call('HGET', counts, key_id)) or 0
  end
  local trial = 0
  if redis.call('HEXISTS', probation, key_id) == 1 then
    -- Back from a failure cooldown: this request is its one trial. The lease keeps every other
    -- request off the key until the trial passes, fails, or the lease runs out.
    local lease = now + tonumber(ARGV[14])
    redis.call('HSET', cooldown, key_id, ms(lease))
    redis.call('HSET', probation, key_id, ms(lease))
    redis.call('ZREM', avail, key_id)
    redis.call('ZADD', cooling, ms(lease), key_id)
    trial = 1
  else
    redis.call('ZADD', avail, used, key_id)
  end
  local affinity_ms = tonumber(ARGV[18])
  if KEYS[11] and affinity_ms > 0 then
    redis.call('SET', KEYS[11], key_id, 'PX', ms(affinity_ms)) -- the conversation's key from now on
  end
  if count_user then
    if reserve then
      redis.call('HINCRBY', KEYS[4], user, 1)
      redis.call('PEXPIRE', KEYS[4], ms(day_end + DAY_MS - now))
    end
    redis.call('HINCRBY', KEYS[5], user, 1)
    redis.call('PEXPIRE', KEYS[5], ms(minute_end + MINUTE_MS - now))
    if track_stream then
      local lease_ms = tonumber(ARGV[13])
      redis.call('ZADD', KEYS[6], ms(now + lease_ms), request_id)
      redis.call('PEXPIRE', KEYS[6], ms(lease_ms + MINUTE_MS))
    end
  end
  return {'ok', key_id, used, 0, trial, now}

elseif op == 'init' then
  local day_start, day_end = tonumber(ARGV[3]), tonumber(ARGV[4])
  if now < day_start or now >= day_end then
    return {'clock', now}
  end
  local counts, cooldown, meta, avail, cooling = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  if redis.call('HEXISTS', counts, SEEDED_FIELD) == 0 then
    return {'seed', now} -- a new day, or Redis lost its data: today's counts come first
  end
  local state = redis.call('HMGET', meta, FP_FIELD, DAY_FIELD, RV_FIELD)
  local seen, top = tonumber(state[3]) or -1, revived_top(KEYS[6])
  if state[1] == ARGV[6] and state[2] == ARGV[5] and top >= seen and top - seen < REVIVED_KEEP then
    return {'ok', now} -- another caller built it just now: picks apply the revivals
  end
  redis.call('DEL', meta, avail, cooling)
  local ttl = ms(day_end + DAY_MS - now)
  redis.call('HSET', meta, FP_FIELD, ARGV[6], DAY_FIELD, ARGV[5], RV_FIELD, ms(revived_top(KEYS[6])))
  for first = 7, #ARGV, 2 * CHUNK do
    local last = math.min(#ARGV, first + 2 * CHUNK - 1)
    local ids = {}
    for i = first, last, 2 do
      ids[#ids + 1] = ARGV[i]
    end
    redis.call('HSET', meta, unpack(ARGV, first, last))
    local c = redis.call('HMGET', counts, unpack(ids))
    local e = redis.call('HMGET', cooldown, unpack(ids))
    local ready, resting = {}, {}
    for i = 1, #ids do
      local count, limit, ends = tonumber(c[i]) or 0, tonumber(ARGV[first + 2 * i - 1]), tonumber(e[i]) or 0
      if count < limit then
        if ends > now then
          resting[#resting + 1] = ms(ends)
          resting[#resting + 1] = ids[i]
        else
          ready[#ready + 1] = count
          ready[#ready + 1] = ids[i]
        end
      end
    end
    if #ready > 0 then
      redis.call('ZADD', avail, unpack(ready))
    end
    if #resting > 0 then
      redis.call('ZADD', cooling, unpack(resting))
    end
  end
  for _, key in ipairs({meta, avail, cooling}) do
    redis.call('PEXPIRE', key, ttl)
  end
  return {'ok', now}

elseif op == 'seed' then
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

elseif op == 'release' then
  local key_id = ARGV[3]
  local count = tonumber(redis.call('HGET', KEYS[1], key_id)) or 0
  if count > 0 then
    count = redis.call('HINCRBY', KEYS[1], key_id, -1)
    revive(KEYS[2], key_id)
  end
  return count

elseif op == 'cool' then
  return cool_until(KEYS[1], ARGV[3], now + tonumber(ARGV[4]))

elseif op == 'fail' then
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

elseif op == 'trial_ok' then
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
  redis.call('HDEL', KEYS[3], key_id, key_id .. ':since')
  revive(KEYS[4], key_id)
  return 1

elseif op == 'read' then
  if #ARGV >= 3 then
    return {now, redis.call('HMGET', KEYS[1], unpack(ARGV, 3))}
  end
  return {now, redis.call('HGETALL', KEYS[1])}

elseif op == 'remember' then
  -- A response: who it was made for, and the key that made it (it only exists on that account).
  redis.call('SET', KEYS[1], ARGV[5] .. ' ' .. ARGV[3], 'PX', ARGV[4])
  return 1

elseif op == 'end_stream' then
  return redis.call('ZREM', KEYS[1], ARGV[3])

elseif op == 'clear' then
  local key_id = ARGV[3]
  redis.call('HDEL', KEYS[1], key_id)
  redis.call('HDEL', KEYS[2], key_id)
  redis.call('HDEL', KEYS[3], key_id, key_id .. ':since')
  revive(KEYS[4], key_id)
  return 1
end

return redis.error_reply('balancer.lua: unknown operation ' .. tostring(op))
