--[[
spend: add a committed call's estimated cost to its token's spend today (daily_budget_usd)
  KEYS[1] tspend:<day>
  ARGV[3] token_id   ARGV[4] micro-USD (an integer, > 0); the hash expires two days after its last spend
  Returns the token's spend today after it. Only tokens with a budget are sent here; the pick
  refuses the token once its spend reaches the budget (token_budget), so the calls in flight when
  it does (they were admitted before their cost was known) are what it can overshoot by.
]]
local function spend()
  local total = redis.call('HINCRBY', KEYS[1], ARGV[3], tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], 2 * DAY_MS)
  return total
end
