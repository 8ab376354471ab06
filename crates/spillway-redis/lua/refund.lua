-- Compensating refund for one key of a request that spanned several cluster slots and was
-- denied after this key was already charged. Restores the value from before the charge, but
-- only if nobody wrote the key since (compare-and-set on exactly what was written): a lost
-- race leaves the charge in place, which can only under-admit, never over-admit.
-- KEYS[1]: the key. ARGV: value written, value before ('' if none), its PTTL then.
--
-- A sliding log (a sorted set, see sliding_log.lua) is described by its newest entry,
-- "Z<at> <member>": the charge either added that entry or replaced the newest one with it
-- ("Z" alone when it replaced none). The refund removes it and puts back what it replaced,
-- if it is still the newest entry; any later admission would have added or grown another.
-- Entries the charge trimmed had left the window, so they are not restored.
local w_at, w_member = string.match(ARGV[1], '^Z(%d+) (.+)$')
if w_at then
  local top = redis.pcall('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if top.err or #top == 0 or top[1] ~= w_member or tonumber(top[2]) ~= tonumber(w_at) then
    return 0
  end
  redis.call('ZREM', KEYS[1], w_member)
  local b_at, b_member = string.match(ARGV[2], '^Z(%d+) (.+)$')
  if b_at then redis.call('ZADD', KEYS[1], b_at, b_member) end
  if tonumber(ARGV[3]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
if (redis.pcall('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' or tonumber(ARGV[3]) <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
