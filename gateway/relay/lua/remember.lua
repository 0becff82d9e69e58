--[[
remember: a Responses API response, the user it was made for and the key that made it
  KEYS[1] resp:<response id digest>    ARGV[3] key_id    ARGV[4] ms    ARGV[5] user_id (no spaces)
  Sets KEYS[1] to "<user_id> <key_id>" for ARGV[4] ms (it only exists on that account). Returns 1.
  Reads no time.
]]
local function remember()
  redis.call('SET', KEYS[1], ARGV[5] .. ' ' .. ARGV[3], 'PX', ARGV[4])
  return 1
end
