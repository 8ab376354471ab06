-- Compensating refund for one key of a request that spanned several cluster slots and was
-- denied after this key was already charged. Restores the value from before the charge, but
-- only if nobody wrote the key since (compare-and-set on exactly what was written): a lost
-- race leaves the charge in place, which can only under-admit, never over-admit.
-- keys[1]: the key. argv: value written, value before ('' if none), its PTTL then.
--
-- A sliding log (a sorted set, see sliding_log.lua) is described by its newest entry,
-- "Z<at> <member>": the charge either added that entry or replaced the newest one with it
-- ("Z" alone when it replaced none). The refund removes it and puts back what it replaced,
-- if it is still the newest entry; any later admission would have added or grown another.
-- Entries the charge trimmed had left the window, so they are not restored.
local function refund(keys, argv)
  local w_at, w_member = string.match(argv[1], '^Z(%d+) (.+)$')
  if w_at then
    local top = redis.pcall('ZREVRANGE', keys[1], 0, 0, 'WITHSCORES')
    if top.err or #top == 0 or top[1] ~= w_member or tonumber(top[2]) ~= tonumber(w_at) then
      return 0
    end
    redis.call('ZREM', keys[1], w_member)
    local b_at, b_member = string.match(argv[2], '^Z(%d+) (.+)$')
    if b_at then redis.call('ZADD', keys[1], b_at, b_member) end
    if tonumber(argv[3]) > 0 then
      redis.call('PEXPIRE', keys[1], argv[3])
    else
      redis.call('DEL', keys[1])
    end
    return 1
  end
  if (redis.pcall('GET', keys[1]) or '') ~= argv[1] then
    return 0
  end
  if argv[2] == '' or tonumber(argv[3]) <= 0 then
    redis.call('DEL', keys[1])
  else
    redis.call('SET', keys[1], argv[2], 'PX', argv[3])
  end
  return 1
end
