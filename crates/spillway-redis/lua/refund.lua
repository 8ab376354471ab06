-- Compensating refund for one key of a request that spanned several cluster slots and was
-- denied after this key was already charged. Restores the value from before the charge, but
-- only if nobody wrote the key since (compare-and-set on the exact value written): a lost
-- race leaves the charge in place, which can only under-admit, never over-admit.
-- KEYS[1]: the key. ARGV: value written, value before ('' if none), its PTTL then.
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' or tonumber(ARGV[3]) <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
