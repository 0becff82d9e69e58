--[[
sharekey's atomic key balancer (key schema v5), assembled into ONE script.

ASSEMBLY
  gateway/relay/balancer.py joins the files of gateway/relay/lua/ in a fixed order (OPERATIONS
  there): this prelude, one file per operation (each a `local function` with its contract beside
  it), then dispatch.lua, which runs the operation named by ARGV[1]. Redis loads the result once
  (one SHA); every request is one EVALSHA with the ARGV protocol below. Nothing of a file runs
  until dispatch calls its operation, so the order only has to put the prelude first and
  dispatch last, and each helper before its first user.

PURPOSE
  Pick the donated key that serves a request and reserve one of its calls for today, enforcing the
  caller's fair-use limits, in ONE script call, so that daily limits hold exactly across any number
  of gateway processes. The same script also owns the small state changes around a pick (give a
  reservation back, cool a key down, count failures, end a trial) and the reads of it, so that
  all of them use the same clock: Redis TIME plus ARGV[2].

  IMPORTANT: if you change behaviour, the key layout or a return shape, bump the schema version in
  the key prefix (BALANCER_VERSION in gateway/net/redisnames.py: "v5" -> "v6"). During a rolling deploy, old and new
  processes then keep separate state instead of misreading each other's.

KEY LAYOUT (p = the configured prefix, e.g. "sk"; one hash tag {p}, so one Redis Cluster slot).
Every key the script touches, and the operations that touch it (names built in gateway/net/redisnames.py):
  p:v5:{p}:counts:<YYYY-MM-DD>     hash key_id -> reservations today (calls in flight included),
                                   "~seeded" once seeded from PostgreSQL (see seed);
                                   expires one day after the day ends
                                   (pick, init, seed, release, read)
  p:v5:{p}:cooldown                hash key_id -> cooling until (epoch ms); stale entries are harmless
                                   (pick, init, cool, fail, reject, trial_ok, clear, read)
  p:v5:{p}:probation               hash key_id -> 0: must pass one trial request before serving again;
                                   >0: a trial is in flight, its lease ends then (epoch ms)
                                   (pick, fail, reject, trial_ok, clear)
  p:v5:{p}:fails                   hash key_id -> failures in the current window,
                                   key_id..":since" -> window start (epoch ms)    (fail, trial_ok, clear);
                                   key_id..":auth" -> a relay key's cooldowns for 401/403 in a row
                                   (reject, trial_ok, clear)
  p:v5:{p}:udaily:<YYYY-MM-DD>     hash user_id -> requests today; expires one day after the day ends (pick)
  p:v5:{p}:urpm:<YYYY-MM-DDTHH:MM> hash user_id -> requests in that minute (UTC); expires after ~2 min (pick;
                                   relay/overlimit.py reads it)
  p:v5:{p}:ustreams:<user_id>      zset request_id -> stream lease end (epoch ms)  (pick, end_stream)
  A gateway token's caps (store/tokens.py Scope), kept per token; only tokens with the cap count:
  p:v5:{p}:tdaily:<YYYY-MM-DD>     hash token_id -> requests today (daily_requests); expires one day
                                   after the day ends (pick)
  p:v5:{p}:trpm:<YYYY-MM-DDTHH:MM> hash token_id -> requests in that minute (UTC, requests_per_minute);
                                   expires after ~2 min (pick)
  p:v5:{p}:tspend:<YYYY-MM-DD>     hash token_id -> estimated spend today in micro-USD (daily_budget_usd),
                                   added after each committed call from its usage and the process'
                                   prices; expires one day after the day ends (spend writes, pick reads)
  A POOL is one candidate list (the keys serving one model for one endpoint family), named by the
  caller: <pid>. Its three keys are a cache of counts, cooldown and the list, rebuilt by `init`:
  p:v5:{p}:pool:<pid>              hash key_id -> daily limit, for every candidate (the membership);
                                   "~fp" -> the list's fingerprint, "~day" -> the day it was built
                                   for, "~rv" -> the last entry of `revived` applied   (pick, init)
  p:v5:{p}:avail:<pid>             zset key_id -> count (the score): candidates under their limit
                                   that were not cooling when last looked at             (pick, init)
  p:v5:{p}:resting:<pid>           zset key_id -> cooldown end as filed: candidates under their limit
                                   that were cooling when last looked at                 (pick, init)
  p:v5:{p}:revived                 zset key_id -> sequence number: keys that may be usable again (a
                                   reservation given back, a cooldown cleared, a trial passed); the
                                   latest 65,536, expires after two idle days
                                   (pick, init read it; release, finish, trial_ok, clear write it)
  A donor's caps on a key (see `terms`), kept per key; only keys with such a cap have them:
  p:v5:{p}:kwin:<key_id>           zset request_id -> start (epoch ms): calls started in the last
                                   60 s (rpm_limit); expires 2 min after the last  (pick)
  p:v5:{p}:kfly:<key_id>           zset request_id -> lease end: calls in flight (max_concurrent); a
                                   lease a dead process left runs out    (pick, release, finish)
  p:v5:{p}:ktok:<key_id>           zset "<request_id> <tokens>" -> end (epoch ms): tokens of calls
                                   that ended in the last 60 s (tpm_limit)         (pick, finish)
  p:v5:{p}:ktoksum:<key_id>        string: the sum of ktok's tokens                 (pick, finish)
  p:v5:{p}:mcounts:<YYYY-MM-DD>    hash "<key_id>|<model>" -> reservations today for one of the
                                   key's models (model_daily_limits)      (pick, release)
  These names are built inside the script from its cooldown key's name (BASE): same prefix, same
  hash tag, so the same slot.
  p:v5:{p}:aff:<digest of user, conversation, model>   string key_id: the conversation's key (pick)
  p:v5:{p}:resp:<digest of the response id>           string "<user_id> <key_id>": who the response
                                   was made for and the key that made it (remember writes, pick reads)
  A pool member's value is its TERMS: "<daily limit>" for a key without caps, else
  "<daily>|<rpm>|<concurrent>|<tpm>|<model daily>|<model>" (0: no such cap; see terms()).
  Pool keys expire one day after the day they were built for ends.
  <YYYY-MM-DD> is the calendar day in the configured time zone. The caller names the day and minute
  keys from its own clock and passes their bounds; the script checks them against TIME (see pick).

COMMON ARGUMENTS (every operation)
  ARGV[1]  operation: pick | init | seed | release | finish | cool | fail | reject | trial_ok | clear | read | end_stream
           | remember | spend
  ARGV[2]  clock offset in ms, added to Redis TIME (0 in production; tests move the clock with it)
  All times below are epoch milliseconds on that clock ("now"). Operations that use no time do
  not read TIME.

INVARIANTS (what makes a pick cost the same for 4 keys or 5,000; tests/relay/test_balancer_invariants.py
has a test per number)
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
  6. A key at a per-minute or concurrency cap is filed in resting until it frees up (the oldest
     start leaving its window, its earliest lease running out), like a cooling key; a finished
     call or a released reservation logs it in `revived`, so it is found again at once. So the
     caps cost what cooling costs: work per key when it reaches a cap, not per pick.
]]

-- The shared prelude: constants, the clock, and the helpers of more than one operation.

local DAY_MS = 86400000
local MINUTE_MS = 60000

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

-- The prefix of every name, "<prefix>:v5:{<prefix>}:", from the cooldown hash's name: the names
-- of the per-key structures of the caps are built from it (one hash tag, so one slot).
local BASE

local function based(cooldown)
  BASE = string.sub(cooldown, 1, -9) -- without "cooldown"
end

local function key_part(kind, id)
  return BASE .. kind .. ':' .. id
end

-- A pool member's terms (see KEY LAYOUT): its daily limit, and its caps (nil for a key without).
local function terms(value)
  local limit = tonumber(value)
  if limit or not value then
    return limit, nil
  end
  local d, rpm, conc, tpm, mday, model = string.match(value, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(.*)$')
  local caps = {rpm = tonumber(rpm), conc = tonumber(conc), tpm = tonumber(tpm), mday = tonumber(mday), model = model}
  return tonumber(d), caps
end

-- "now": Redis TIME plus the offset in ARGV[2], read once per call by clock(), which every
-- operation that uses the time calls first (the helpers below read `now` after that).
local now

local function clock()
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
  return now
end

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

local function revived_top(revived)
  local top = redis.call('ZRANGE', revived, -1, -1, 'WITHSCORES')
  return tonumber(top[2]) or 0
end

-- Log that a key may be usable again (a reservation given back, a cooldown cleared): every pool
-- applies the log entries it has not seen before its next pick (INVARIANTS 2).
local function revive(revived, key_id)
  redis.call('ZADD', revived, revived_top(revived) + 1, key_id)
  redis.call('ZREMRANGEBYRANK', revived, 0, -REVIVED_KEEP - 1)
  redis.call('PEXPIRE', revived, 2 * DAY_MS)
end

-- Is the pool built for this candidate list (its fingerprint) and day, without having missed a
-- revival the log no longer keeps (INVARIANTS 5)? Returns that, "~rv" (-1: never) and the log's top.
local function pool_state(meta, revived, fingerprint, day)
  local state = redis.call('HMGET', meta, FP_FIELD, DAY_FIELD, RV_FIELD)
  local seen, top = tonumber(state[3]) or -1, revived_top(revived)
  local built = state[1] == fingerprint and state[2] == day and top >= seen and top - seen < REVIVED_KEEP
  return built, seen, top
end
