--[[
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
  ARGV[20] token_id: the caller's gateway token ("": none of its caps apply)
  ARGV[21] token daily limit      ARGV[22] token per-minute limit
  ARGV[23] token daily budget in micro-USD (0 = none of these caps; counted like the user's)
  ARGV[24], ...  key ids not to pick (the ones a retry already tried)
  KEYS[11] tdaily:<day>   KEYS[12] trpm:<minute>   KEYS[13] tspend:<day> (the token's counters;
    read and written only when ARGV[20] is set and the cap is)
  KEYS[14] aff:<conversation digest> (optional): string -> key_id.
  KEYS[15] resp:<response id digest> (optional): string -> "<user_id> <key_id>" (see remember).
    One made for another user than ARGV[11]: the answer is response_not_found. Else the key named
    there is taken first (KEYS[15] before KEYS[14]) when it is a member of this pool, not
    excluded, under its limit, not cooling and not on probation; else the usual least-used pick.
    KEYS[14] is then set to the key picked, for ARGV[18] ms. Both are in the one hash slot; pass
    a name that is never set to leave one out.
  Returns {outcome, key_id or "", used_today, retry_after_ms, trial (0|1), now[, held (0|1)]}
    outcome: ok | exhausted | cooling | busy | user_daily | user_rpm | user_streams
      | token_daily | token_rpm | token_budget | response_not_found | clock | init
    held (ok only): 1 when the key has a concurrency or token cap, so the call must be ended
      with `finish` (or its reservation given back with `release`).
    ok: the key with the fewest reservations among those under their limit and not cooling;
      its count was incremented (and then the user's counters, and the stream lease added), or
      with reserve = 0 only the user's minute; used_today is the key's count after it.
      A key on probation whose cooldown has ended is handed out as a trial (trial = 1): its
      cooldown and probation become now + trial lease, so no second request reaches it.
    Caps (INVARIANTS 6): a key at its rpm, concurrency or token cap, or at its model's daily
      limit, is not taken; taking one counts the call in its minute window, in flight (lease:
      ARGV[13], as a stream's) and on its model today (see take_caps).
    busy: none available, and the soonest key to come back is at a per-minute or concurrency cap
      (retry: when it frees up; 1 s at most for a concurrency cap).
    cooling: none available, and at least one key under its limit is cooling (retry: its end).
    exhausted: every candidate is at its daily limit, cooling or not (retry: the day's end).
    token_daily, token_rpm: the token's requests today / this minute reached its cap (retry: the
      day's or minute's end); token_budget: its spend today (tspend, added by `spend` after each
      committed call) reached its budget (retry: the day's end). Checked after the user's limits,
      with the same rules (the day only when reserving, nothing on a retry's pick).
    response_not_found: KEYS[15] names a response made for another user (checked after the
      user's limits): nothing was counted or reserved.
    "clock": now is outside the given day or minute: nothing was read or written; the caller
    names the keys again from the returned now and calls again.
    "init": the pool must be (re)built first (see INVARIANTS 5): the caller calls `init`, then
    pick again. Nothing was counted.
  A refusal writes nothing but the re-filing of pool entries (and dropping expired stream leases).
  Keeps INVARIANTS 1-5. Its steps, in the order they run, are the functions below:
    pick_request    ARGV as one table, read once
    named_right     the caller's day and minute keys against TIME                    -> clock
    user_refusal    the caller's daily, per-minute and concurrent-stream limits      -> user_*
    token_refusal   the caller's token's daily, per-minute and budget caps           -> token_*
    response_owner  whose response the request continues, and its key               -> response_not_found
    pool_state, refresh  the pool is today's and built from this list; revivals applied -> init
    affine_key      the response's, else the conversation's key, if it can serve now
    choose          the lowest-scored usable entry of avail, filing stale entries away
                    (model_spent, busy_until: the caps' truth)
    refusal         busy, cooling or exhausted, from the head of resting
    reserve         count the call (take_caps), hand out a trial, set the conversation's key,
                    count the user
]]

-- The pick's ARGV, named (see above).
local function pick_request()
  local r = {
    day_start = tonumber(ARGV[3]),
    day_end = tonumber(ARGV[4]),
    minute_end = tonumber(ARGV[5]) + MINUTE_MS,
    count_user = ARGV[6] == '1',
    daily = tonumber(ARGV[7]),
    per_minute = tonumber(ARGV[8]),
    streams_limit = tonumber(ARGV[10]),
    user = ARGV[11],
    request_id = ARGV[12],
    stream_lease_ms = tonumber(ARGV[13]),
    trial_lease_ms = tonumber(ARGV[14]),
    day = ARGV[15],
    fingerprint = ARGV[16],
    seed = tonumber(ARGV[17]),
    affinity_ms = tonumber(ARGV[18]),
    reserve = ARGV[19] == '1',
    token = ARGV[20],
    token_daily = tonumber(ARGV[21]),
    token_rpm = tonumber(ARGV[22]),
    token_budget = tonumber(ARGV[23]),
    exclude = {},
    excluded = 0,
  }
  r.track_stream = r.count_user and r.reserve and ARGV[9] == '1' and r.streams_limit > 0
  r.count_token = r.count_user and r.token ~= ''
  for i = 24, #ARGV do
    r.exclude[ARGV[i]] = true
    r.excluded = r.excluded + 1
  end
  return r
end

-- The caller's clock chose the key names; only Redis time decides which day a call counts on.
local function named_right(r)
  if now < r.day_start or now >= r.day_end then
    return false
  end
  return not r.count_user or (now >= r.minute_end - MINUTE_MS and now < r.minute_end)
end

-- The first of `counters` ({outcome, hash, field, limit (0: none), retry_after_ms}) whose count
-- has reached its limit, as a refusal; nil when none has. A counter without a limit costs nothing.
local function first_full(counters)
  for _, c in ipairs(counters) do
    if c[4] > 0 and (tonumber(redis.call('HGET', c[2], c[3])) or 0) >= c[4] then
      return {c[1], '', 0, c[5], 0, now}
    end
  end
  return nil
end

-- The caller's fair-use limits, before any key is looked at: a refusal, or nil.
local function user_refusal(r, udaily, urpm, ustreams)
  if not r.count_user then
    return nil
  end
  local full = first_full({
    {'user_daily', udaily, r.user, r.reserve and r.daily or 0, r.day_end - now},
    {'user_rpm', urpm, r.user, r.per_minute, r.minute_end - now},
  })
  if full then
    return full
  end
  if r.track_stream then
    -- A stream whose lease ran out (its process died) no longer holds a slot. Below the limit
    -- (the common case) whether this request already holds one does not matter: no ZSCORE.
    redis.call('ZREMRANGEBYSCORE', ustreams, '-inf', ms(now))
    if redis.call('ZCARD', ustreams) >= r.streams_limit and not redis.call('ZSCORE', ustreams, r.request_id) then
      return {'user_streams', '', 0, 1000, 0, now}
    end
  end
  return nil
end

-- The caller's token's caps, after the user's limits and with their rules: a refusal, or nil.
-- A token without caps costs nothing here (no command).
local function token_refusal(r, tokens)
  if not r.count_token then
    return nil
  end
  return first_full({
    {'token_daily', tokens.daily, r.token, r.reserve and r.token_daily or 0, r.day_end - now},
    {'token_rpm', tokens.rpm, r.token, r.token_rpm, r.minute_end - now},
    {'token_budget', tokens.spend, r.token, r.reserve and r.token_budget or 0, r.day_end - now},
  })
end

-- Count the call against the token's caps that it has (see token_refusal).
local function count_token(r, tdaily, trpm)
  if not r.count_token then
    return
  end
  if r.reserve and r.token_daily > 0 then
    redis.call('HINCRBY', tdaily, r.token, 1)
    redis.call('PEXPIRE', tdaily, ms(r.day_end + DAY_MS - now))
  end
  if r.token_rpm > 0 then
    redis.call('HINCRBY', trpm, r.token, 1)
    redis.call('PEXPIRE', trpm, ms(r.minute_end + MINUTE_MS - now))
  end
end

-- A response belongs to the user it was made for: another user's id is not found, here or
-- upstream. Returns the key that made the response (or nil), and whether it is another user's.
local function response_owner(response, user)
  local made = response and redis.call('GET', response)
  if not made then
    return nil, false
  end
  local owner, id = string.match(made, '^(%S+) (.+)$')
  if owner ~= user then
    return nil, true
  end
  return id, false
end

-- The caps' truth for one key (INVARIANTS 6). Spent on this pool's model for today: the key's
-- count for the model it serves here reached that model's daily limit.
local function model_spent(pool, id, caps)
  if not caps or caps.mday <= 0 then
    return false
  end
  return (tonumber(redis.call('HGET', pool.mcounts, id .. '|' .. caps.model)) or 0) >= caps.mday
end

-- Tokens of the calls that ended in the last 60 s (tpm_limit): entries that left the window are
-- taken off the sum, each once.
local function tokens_in_window(id)
  local toks, sum = key_part('ktok', id), key_part('ktoksum', id)
  local gone = redis.call('ZRANGEBYSCORE', toks, '-inf', ms(now - MINUTE_MS))
  if #gone > 0 then
    local total = 0
    for i = 1, #gone do
      total = total + (tonumber(string.match(gone[i], ' (%d+)$')) or 0)
    end
    redis.call('ZREMRANGEBYSCORE', toks, '-inf', ms(now - MINUTE_MS))
    redis.call('DECRBY', sum, total)
  end
  return tonumber(redis.call('GET', sum)) or 0, toks
end

-- When a key at one of its per-minute or concurrency caps frees up (epoch ms), or nil when it is
-- under all of them. A call in flight frees its slot earlier than its lease when it ends (finish).
local function busy_until(id, caps)
  if not caps then
    return nil
  end
  local free = nil
  if caps.rpm > 0 then
    local win = key_part('kwin', id)
    redis.call('ZREMRANGEBYSCORE', win, '-inf', ms(now - MINUTE_MS))
    local n = redis.call('ZCARD', win)
    if n >= caps.rpm then
      -- Under the cap again once the (n - rpm + 1)-th oldest start has left the window.
      local leaving = redis.call('ZRANGE', win, n - caps.rpm, n - caps.rpm, 'WITHSCORES')
      free = tonumber(leaving[2]) + MINUTE_MS
    end
  end
  if caps.conc > 0 then
    local fly = key_part('kfly', id)
    redis.call('ZREMRANGEBYSCORE', fly, '-inf', ms(now))
    if redis.call('ZCARD', fly) >= caps.conc then
      local first = tonumber(redis.call('ZRANGE', fly, 0, 0, 'WITHSCORES')[2])
      free = math.max(free or 0, first)
    end
  end
  if caps.tpm > 0 then
    local used, toks = tokens_in_window(id)
    if used >= caps.tpm then
      local oldest = redis.call('ZRANGE', toks, 0, 0, 'WITHSCORES')[2]
      free = math.max(free or 0, (tonumber(oldest) or now) + MINUTE_MS)
    end
  end
  return free
end

-- File a pool member where it belongs now: in avail at its count, in resting until its cooldown
-- ends, or nowhere when it is spent for today (INVARIANTS 2). Caps are checked when it is taken.
local function place(pool, id, value)
  local limit, caps = terms(value)
  local c = tonumber(redis.call('HGET', pool.counts, id)) or 0
  local ends = tonumber(redis.call('HGET', pool.cooldown, id)) or 0
  if c >= limit or model_spent(pool, id, caps) then
    redis.call('ZREM', pool.avail, id)
  elseif ends > now then
    redis.call('ZREM', pool.avail, id)
    redis.call('ZADD', pool.resting, ms(ends), id)
  else
    redis.call('ZADD', pool.avail, c, id)
  end
end

-- Apply the revivals logged since the pool last looked (keys given back, cleared, past a trial):
-- each member among them is filed again from the truth. False when there are more than a pick
-- applies: the pool is then rebuilt (INVARIANTS 4, 5).
local function refresh(pool, seen, top)
  if top <= seen then
    return true
  end
  local back = redis.call('ZRANGEBYSCORE', pool.revived, '(' .. ms(seen), ms(top), 'LIMIT', 0, REVIVED_MAX + 1)
  if #back > REVIVED_MAX then
    return false
  end
  for i = 1, #back do
    local value = redis.call('HGET', pool.meta, back[i])
    if value then
      redis.call('ZREM', pool.resting, back[i])
      place(pool, back[i], value)
    end
  end
  redis.call('HSET', pool.meta, RV_FIELD, ms(top))
  return true
end

-- Can this key serve now: a member of the pool, not excluded, under its limits and caps, not
-- cooling and not on probation? Its count and caps when it can, else nil.
local function can_serve(pool, r, id)
  if not id or r.exclude[id] then
    return nil
  end
  local limit, caps = terms(redis.call('HGET', pool.meta, id))
  if not limit then
    return nil
  end
  local c = tonumber(redis.call('HGET', pool.counts, id)) or 0
  if c >= limit or (tonumber(redis.call('HGET', pool.cooldown, id)) or 0) > now then
    return nil
  end
  if redis.call('HEXISTS', pool.probation, id) ~= 0 or model_spent(pool, id, caps) or busy_until(id, caps) then
    return nil
  end
  return c, caps
end

-- Affinity: the key that produced the response this request continues, else the one that last
-- served this conversation, when it can serve now. Returns the key and its count, or nil.
local function affine_key(pool, r, made_by, conversation)
  local c, caps = can_serve(pool, r, made_by)
  if c then
    return made_by, c, caps
  end
  if conversation then
    local id = redis.call('GET', conversation)
    c, caps = can_serve(pool, r, id)
    if c then
      return id, c, caps
    end
  end
  return nil
end

-- Bring back up to DUE_MAX members whose cooldown (as filed) has ended; one whose cooldown was
-- extended since is filed again under its new end. Returns how many were looked at.
local function come_back(pool)
  local due = redis.call('ZRANGEBYSCORE', pool.resting, '-inf', ms(now), 'LIMIT', 0, DUE_MAX)
  for i = 1, #due do
    redis.call('ZREM', pool.resting, due[i])
    local value = redis.call('HGET', pool.meta, due[i])
    if value then
      place(pool, due[i], value)
    end
  end
  return #due
end

-- The lowest-scored entry of avail that the truth says can serve (INVARIANTS 1, 3, 4): spent and
-- cooling entries met on the way are filed away, a stale score is re-filed (up to REPAIRS).
-- Returns the key and its count, or nil when avail has nothing usable.
local function choose(pool, r)
  local repairs = 0
  while true do
    local moved = come_back(pool)
    local batch = redis.call('ZRANGE', pool.avail, 0, BATCH + r.excluded - 1, 'WITHSCORES')
    local n = #batch / 2
    local changed = false
    if n > 0 then
      -- Ties go at random: start at a random one of the entries sharing the lowest score.
      local ties = 1
      while ties < n and batch[2 * ties + 2] == batch[2] do
        ties = ties + 1
      end
      local start = r.seed % ties
      for j = 0, n - 1 do
        local i = (start + j) % n + 1
        local id, score = batch[2 * i - 1], tonumber(batch[2 * i])
        if not r.exclude[id] then
          local c = tonumber(redis.call('HGET', pool.counts, id)) or 0
          local limit, caps = terms(redis.call('HGET', pool.meta, id))
          local ends = tonumber(redis.call('HGET', pool.cooldown, id)) or 0
          local spent = c >= (limit or 0) or model_spent(pool, id, caps)
          local busy = not spent and ends <= now and busy_until(id, caps)
          if spent then
            redis.call('ZREM', pool.avail, id) -- spent for today (a release brings it back)
            changed = true
          elseif ends > now or busy then
            redis.call('ZREM', pool.avail, id) -- cooling, or at a cap until `busy` (INVARIANTS 6)
            redis.call('ZADD', pool.resting, ms(busy or ends), id)
            changed = true
          elseif c ~= score and repairs < REPAIRS then
            -- Another pool used this key since: put it where its count says, and look again.
            redis.call('ZADD', pool.avail, c, id)
            repairs = repairs + 1
            changed = true
            break
          else
            return id, c, caps
          end
        end
      end
    end
    -- Every turn that does not pick removes, re-files or brings back at least one entry.
    if not changed and moved == 0 then
      return nil
    end
  end
end

-- A key filed in resting at one of its caps (not cooling): when to try again. A concurrency slot
-- frees when a call ends, which no clock says: soon, at most when its lease runs out.
local function busy_refusal(pool, id, filed)
  local _, caps = terms(redis.call('HGET', pool.meta, id))
  local wait = math.max(1, filed - now)
  if caps and caps.conc > 0 then
    wait = math.min(wait, 1000)
  end
  return {'busy', '', 0, wait, 0, now}
end

-- Nothing can serve: busy (every key not spent is at a per-minute or concurrency cap, retry when
-- the soonest frees up), cooling (retry when the soonest cooldown ends) or exhausted (retry at
-- the day's end). An entry whose cooldown was extended since it was filed is filed again first.
local function refusal(pool, r)
  for _ = 1, REPAIRS do
    local soonest = redis.call('ZRANGE', pool.resting, 0, 0, 'WITHSCORES')
    if not soonest[2] then
      return {'exhausted', '', 0, r.day_end - now, 0, now} -- nothing rests: nothing will come back today
    end
    local filed = tonumber(soonest[2])
    local ends = tonumber(redis.call('HGET', pool.cooldown, soonest[1])) or 0
    if ends <= now then
      return busy_refusal(pool, soonest[1], filed) -- filed at a cap, not cooling
    end
    if ends <= filed then
      return {'cooling', '', 0, math.max(1, filed - now), 0, now}
    end
    redis.call('ZADD', pool.resting, ms(ends), soonest[1]) -- extended since it was filed
  end
  local soonest = redis.call('ZRANGE', pool.resting, 0, 0, 'WITHSCORES')
  if soonest[2] then
    return {'cooling', '', 0, math.max(1, tonumber(soonest[2]) - now), 0, now}
  end
  return {'exhausted', '', 0, r.day_end - now, 0, now}
end

-- Count a call against the key's caps: a start in its minute window, a lease in flight, a call
-- on the model today (a reservation only). Returns 1 when the call must be finished (finish: a
-- slot to free, tokens to count), else 0.
local function take_caps(pool, r, key_id, caps)
  if caps.rpm > 0 then
    local win = key_part('kwin', key_id)
    redis.call('ZADD', win, ms(now), r.request_id)
    redis.call('PEXPIRE', win, 2 * MINUTE_MS)
  end
  if caps.conc > 0 then
    local fly = key_part('kfly', key_id)
    redis.call('ZADD', fly, ms(now + r.stream_lease_ms), r.request_id)
    redis.call('PEXPIRE', fly, ms(r.stream_lease_ms + MINUTE_MS))
  end
  if caps.mday > 0 and r.reserve then
    redis.call('HINCRBY', pool.mcounts, key_id .. '|' .. caps.model, 1)
    redis.call('PEXPIRE', pool.mcounts, ms(r.day_end + DAY_MS - now))
  end
  return (caps.conc > 0 or caps.tpm > 0) and 1 or 0
end

-- Take the key: count the call on it (or, with reserve = 0, only read its count `c`, which pick
-- has not changed since it was read), hand it out as a trial when it is on probation (unknown
-- when `probation_checked`: can_serve already found it off probation, and pick does not write
-- probation before here), set the conversation's key, count the user and the token.
local function reserve(pool, r, key_id, c, caps, probation_checked, udaily, urpm, ustreams, conversation, tokens)
  local used = c
  if r.reserve then
    used = redis.call('HINCRBY', pool.counts, key_id, 1)
    redis.call('PEXPIRE', pool.counts, ms(r.day_end + DAY_MS - now))
  end
  local held = 0
  if caps then
    held = take_caps(pool, r, key_id, caps)
  end
  local trial = 0
  if not probation_checked and redis.call('HEXISTS', pool.probation, key_id) == 1 then
    -- Back from a failure cooldown: this request is its one trial. The lease keeps every other
    -- request off the key until the trial passes, fails, or the lease runs out.
    local lease = now + r.trial_lease_ms
    redis.call('HSET', pool.cooldown, key_id, ms(lease))
    redis.call('HSET', pool.probation, key_id, ms(lease))
    redis.call('ZREM', pool.avail, key_id)
    redis.call('ZADD', pool.resting, ms(lease), key_id)
    trial = 1
  else
    redis.call('ZADD', pool.avail, used, key_id)
  end
  if conversation and r.affinity_ms > 0 then
    redis.call('SET', conversation, key_id, 'PX', ms(r.affinity_ms)) -- the conversation's key from now on
  end
  if r.count_user then
    if r.reserve then
      redis.call('HINCRBY', udaily, r.user, 1)
      redis.call('PEXPIRE', udaily, ms(r.day_end + DAY_MS - now))
    end
    redis.call('HINCRBY', urpm, r.user, 1)
    redis.call('PEXPIRE', urpm, ms(r.minute_end + MINUTE_MS - now))
    if r.track_stream then
      redis.call('ZADD', ustreams, ms(now + r.stream_lease_ms), r.request_id)
      redis.call('PEXPIRE', ustreams, ms(r.stream_lease_ms + MINUTE_MS))
    end
  end
  count_token(r, tokens.daily, tokens.rpm)
  return {'ok', key_id, used, 0, trial, now, held}
end

local function pick()
  clock()
  local r = pick_request()
  based(KEYS[2])
  local pool = {
    counts = KEYS[1], cooldown = KEYS[2], probation = KEYS[3],
    meta = KEYS[7], avail = KEYS[8], resting = KEYS[9], revived = KEYS[10],
    mcounts = BASE .. 'mcounts:' .. r.day,
  }
  local udaily, urpm, ustreams, conversation, response = KEYS[4], KEYS[5], KEYS[6], KEYS[14], KEYS[15]
  local tokens = {daily = KEYS[11], rpm = KEYS[12], spend = KEYS[13]}
  if not named_right(r) then
    return {'clock', '', 0, 0, 0, now}
  end
  local refused = user_refusal(r, udaily, urpm, ustreams) or token_refusal(r, tokens)
  if refused then
    return refused
  end
  local made_by, foreign = response_owner(response, r.user)
  if foreign then
    return {'response_not_found', '', 0, 0, 0, now}
  end
  -- The pool's structures must be today's, built from the caller's candidate list, and must not
  -- have missed a key given back or revived (the log keeps the latest REVIVED_KEEP).
  local built, seen, top = pool_state(pool.meta, pool.revived, r.fingerprint, r.day)
  if not built or not refresh(pool, seen, top) then
    return {'init', '', 0, 0, 0, now}
  end
  local key_id, c, caps = affine_key(pool, r, made_by, conversation)
  local probation_checked = key_id ~= nil
  if not key_id then
    key_id, c, caps = choose(pool, r)
    if not key_id then
      return refusal(pool, r)
    end
  end
  return reserve(pool, r, key_id, c, caps, probation_checked, udaily, urpm, ustreams, conversation, tokens)
end
