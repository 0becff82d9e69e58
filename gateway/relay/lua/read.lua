--[[
read: a hash and the time it was read at (usage today, cooldowns left)
  KEYS[1] counts:<day> or cooldown    ARGV[3], ...  fields (none: the whole hash)
  Returns {now, values}: with fields, their values in order (nil when absent); without, the
  HGETALL list. Writes nothing.
]]
local function read()
  clock()
  if #ARGV >= 3 then
    return {now, redis.call('HMGET', KEYS[1], unpack(ARGV, 3))}
  end
  return {now, redis.call('HGETALL', KEYS[1])}
end
