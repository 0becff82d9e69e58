-- dispatch: run the operation ARGV[1] names (every operation above is one entry).
local OPERATIONS = {
  pick = pick,
  init = init,
  seed = seed,
  release = release,
  finish = finish,
  cool = cool,
  fail = fail,
  reject = reject,
  trial_ok = trial_ok,
  clear = clear,
  read = read,
  end_stream = end_stream,
  remember = remember,
  spend = spend,
}

local operation = OPERATIONS[ARGV[1]]
if operation == nil then
  return redis.error_reply('balancer: unknown operation ' .. tostring(ARGV[1]))
end
return operation()
