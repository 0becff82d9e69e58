--[[
balancer.lua: sharekey's atomic key balancer (key schema v1).

PURPOSE
  Pick the donated key that serves a request and reserve one of its calls for today, enforcing the
  caller's fair-use limits, in ONE script call, so that daily limits hold exactly across any number
  of gateway processes. The same script also owns the small state changes around a pick (give a
  reservation back, cool a key down, count failures, end a trial) and the reads of it, so that
  all of them use the same clock: Redis TIME plus ARGV[2].

  IMPORTANT: if you change behaviour, the key layout or a return shape, bump the schema version in
  the key prefix (BALANCER_VERSION in gateway/net/redisnames.py: "v1" -> "v2"). During a rolling deploy, old and new
  processes then keep separate state instead of misreading each other's.

KEY LAYOUT (p = the configured prefix, e.g. "sk"; one hash tag {p}, so one Redis Cluster slot)
  p:v1:{p}:counts:<YYYY-MM-DD>     hash key_id -> reservations today (calls in flight included);
                                   expires one day after the day ends
  p:v1:{p}:cooldown                hash key_id -> cooling until (epoch ms); stale entries are harmless
  p:v1:{p}:probation               hash key_id -> 0: must pass one trial request before serving again;
                                   >0: a trial is in flight, its lease ends then (epoch ms)
  p:v1:{p}:fails                   hash key_id -> failures in the current window,
                                   key_id..":since" -> window start (epoch ms)
  p:v1:{p}:udaily:<YYYY-MM-DD>     hash user_id -> requests today; expires one day after the day ends
  p:v1:{p}:urpm:<YYYY-MM-DDTHH:MM> hash user_id -> requests in that minute (UTC); expires after ~2 min
  p:v1:{p}:ustreams:<user_id>      zset request_id -> stream lease end (epoch ms)
  <YYYY-MM-DD> is the calendar day in the configured time zone. The caller names the day and minute
  keys from its own clock and passes their bounds; the script checks them against TIME (see pick).

COMMON ARGUMENTS (every operation)
  ARGV[1]  operation: pick | release | cool | fail | trial_ok | clear | read | end_stream
  ARGV[2]  clock offset in ms, added to Redis TIME (0 in production; tests move the clock with it)
  All times below are epoch milliseconds on that clock ("now").

pick: reserve a call on the least-used available key, after the caller's limits
  KEYS[1] counts:<day>   KEYS[2] cooldown   KEYS[3] probation
  KEYS[4] udaily:<day>   KEYS[5] urpm:<minute>   KEYS[6] ustreams:<user_id>
  ARGV[3]  day start      ARGV[4]  day end (exclusive): the bounds of <day> in the time zone
  ARGV[5]  minute start (exclusive end = +60000): the bounds of <minute>
  ARGV[6]  count_user: 1 = enforce and count the user's limits, 0 = skip them (a retry)
  ARGV[7]  user daily limit       ARGV[8]  user per-minute limit   (0 = unlimited)
  ARGV[9]  stream: 1 or 0         ARGV[10] user concurrent-stream limit (0 = unlimited)
  ARGV[11] user_id                ARGV[12] request_id
  ARGV[13] stream lease ms        ARGV[14] trial lease ms
  ARGV[15], ARGV[16], ...  key_id, daily_limit pairs: the candidates, already shuffled; the first
           of the least-used wins, so the shuffle is the tie-break
  Returns {outcome, key_id or "", used_today, retry_after_ms, trial (0|1), now}
    outcome: ok | exhausted | cooling | user_daily | user_rpm | user_streams | clock
    ok: the key with the fewest reservations among those under their limit and not cooling;
      its count was incremented (and then the user's counters, and the stream lease added).
      A key on probation whose cooldown has ended is handed out as a trial (trial = 1): its
      cooldown and probation become now + trial lease, so no second request reaches it.
    cooling: none available, and at least one key under its limit is cooling (retry: its end).
    exhausted: every candidate is at its daily limit, cooling or not (retry: the day's end).
    "clock": now is outside the given day or minute: nothing was read or written; the caller
    names the keys again from the returned now and calls again.
  A refusal writes nothing (except dropping expired stream leases).

release: give back a reservation (an attempt that failed before its commit point)
  KEYS[1] counts:<day of the pick>    ARGV[3] key_id
  Returns the key's count after it (never below 0).

cool: cool a key down until now + ARGV[4] ms, or leave a later end as it is
  KEYS[1] cooldown    ARGV[3] key_id    ARGV[4] ms
  Returns the cooldown end.

fail: count a failure (5xx, timeout); at the threshold cool the key and put it on probation
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails
  ARGV[3] key_id      ARGV[4] cooldown ms    ARGV[5] failures before cooldown    ARGV[6] window ms
  On probation, one failure cools the key again, unless it is still cooling from before (a late
  failure of a request picked earlier): that changes nothing.
  Returns {cooled (0|1), failures in the window}

trial_ok: the trial request succeeded: end probation and the trial lease
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    ARGV[3] key_id
  Returns 1 when a trial was ended, else 0.

clear: forget cooldown, probation and failures (owner resumed the key, or a health check passed)
  KEYS[1] cooldown    KEYS[2] probation    KEYS[3] fails    ARGV[3] key_id
  Returns 1.

read: a hash and the time it was read at (usage today, cooldowns left)
  KEYS[1] counts:<day> or cooldown    ARGV[3], ...  fields (none: the whole hash)
  Returns {now, values}: with fields, their values in order (nil when absent); without, the
  HGETALL list. Writes nothing.

end_stream: a stream ended: drop its lease from the user's concurrent streams
  KEYS[1] ustreams:<user_id>    ARGV[3] request_id
  Returns 1 when the lease was there, else 0.
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

if op == 'pick' then
  local day_start, day_end = tonumber(ARGV[3]), tonumber(ARGV[4])
  local minute_end = tonumber(ARGV[5]) + MINUTE_MS
  local count_user = ARGV[6] == '1'
  local user, request_id = ARGV[11], ARGV[12]
  local streams_limit = tonumber(ARGV[10])
  local track_stream = count_user and ARGV[9] == '1' and streams_limit > 0

  -- The caller's clock chose the key names; only Redis time decides which day a call counts on.
  if now < day_start or now >= day_end or (count_user and (now < minute_end - MINUTE_MS or now >= minute_end)) then
    return {'clock', '', 0, 0, 0, now}
  end

  if count_user then
    local daily, per_minute = tonumber(ARGV[7]), tonumber(ARGV[8])
    if daily > 0 and (tonumber(redis.call('HGET', KEYS[4], user)) or 0) >= daily then
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

  local ids = {}
  for i = 15, #ARGV, 2 do
    ids[#ids + 1] = ARGV[i]
  end
  local counts = redis.call('HMGET', KEYS[1], unpack(ids))
  local cools = redis.call('HMGET', KEYS[2], unpack(ids))
  local probation = redis.call('HMGET', KEYS[3], unpack(ids))

  local best, best_count, soonest = nil, nil, nil
  for i = 1, #ids do
    local limit = tonumber(ARGV[14 + 2 * i])
    local count = tonumber(counts[i]) or 0
    local cooling = tonumber(cools[i]) or 0
    -- A key at its limit is spent for today whether or not it is also cooling.
    if count < limit then
      if cooling > now then
        if not soonest or cooling < soonest then
          soonest = cooling
        end
      elseif not best_count or count < best_count then
        best, best_count = i, count
      end
    end
  end

  if not best then
    if soonest then
      return {'cooling', '', 0, soonest - now, 0, now}
    end
    return {'exhausted', '', 0, day_end - now, 0, now}
  end

  local key_id = ids[best]
  local used = redis.call('HINCRBY', KEYS[1], key_id, 1)
  redis.call('PEXPIRE', KEYS[1], ms(day_end + DAY_MS - now))
  local trial = 0
  if probation[best] then
    -- Back from a failure cooldown: this request is its one trial. The lease keeps every other
    -- request off the key until the trial passes, fails, or the lease runs out.
    local lease = now + tonumber(ARGV[14])
    redis.call('HSET', KEYS[2], key_id, ms(lease))
    redis.call('HSET', KEYS[3], key_id, ms(lease))
    trial = 1
  end
  if count_user then
    redis.call('HINCRBY', KEYS[4], user, 1)
    redis.call('PEXPIRE', KEYS[4], ms(day_end + DAY_MS - now))
    redis.call('HINCRBY', KEYS[5], user, 1)
    redis.call('PEXPIRE', KEYS[5], ms(minute_end + MINUTE_MS - now))
    if track_stream then
      local lease_ms = tonumber(ARGV[13])
      redis.call('ZADD', KEYS[6], ms(now + lease_ms), request_id)
      redis.call('PEXPIRE', KEYS[6], ms(lease_ms + MINUTE_MS))
    end
  end
  return {'ok', key_id, used, 0, trial, now}

elseif op == 'release' then
  local count = tonumber(redis.call('HGET', KEYS[1], ARGV[3])) or 0
  if count > 0 then
    return redis.call('HINCRBY', KEYS[1], ARGV[3], -1)
  end
  return 0

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
  return 1

elseif op == 'read' then
  if #ARGV >= 3 then
    return {now, redis.call('HMGET', KEYS[1], unpack(ARGV, 3))}
  end
  return {now, redis.call('HGETALL', KEYS[1])}

elseif op == 'end_stream' then
  return redis.call('ZREM', KEYS[1], ARGV[3])

elseif op == 'clear' then
  local key_id = ARGV[3]
  redis.call('HDEL', KEYS[1], key_id)
  redis.call('HDEL', KEYS[2], key_id)
  redis.call('HDEL', KEYS[3], key_id, key_id .. ':since')
  return 1
end

return redis.error_reply('balancer.lua: unknown operation ' .. tostring(op))
