--[[
cool: cool a key down until now + ARGV[4] ms, or leave a later end as it is
  KEYS[1] cooldown    ARGV[3] key_id    ARGV[4] ms
  Returns the cooldown end.
  Keeps INVARIANTS 1: only the truth changes; pools find the key cooling when they next look at
  it, and file it in resting then.
]]
local function cool()
  clock()
  return cool_until(KEYS[1], ARGV[3], now + tonumber(ARGV[4]))
end
