-- Sliding log (code 5), mirroring spillway-core algorithm/sliding_log.rs.
-- p1 = limit, p2 = window (microseconds).
--
-- The log is a sorted set at the limit's key: one member per admitted timestamp, scored by
-- the timestamp (microseconds, exact as a double below 2^53) and named "<end>:<n>", where n is
-- the units admitted at that time and end the running total of units through this entry. The
-- units of any run of entries are then a difference of two ends, so a call reads the newest
-- entry and the oldest live one (O(log n)) instead of the whole log; a denial finds the entry
-- that frees enough room by a binary search over ranks (O(log^2 n)). A write trims the entries
-- that left the window with one ZREMRANGEBYSCORE (amortised O(log n): each entry is removed
-- once). Denials and peeks write nothing. The set stores neither the limit nor the window:
-- both come in as arguments, so a limit whose numbers change reads the same entries with its
-- new numbers. Ends restart from 0 whenever the log empties.
--
-- Instead of evaluating a stored string, ALG[5] receives the key and reads what it needs; its
-- "state" is a plan that log_write applies (see check.lua).

-- One member and its score as {at, e(nd), n, member}.
local function log_entry(member, score)
  local e, n = string.match(member, '^(%d+):(%d+)$')
  return {at = tonumber(score), e = tonumber(e), n = tonumber(n), member = member}
end

-- Earlier versions kept the log as the string "L;<at>,<n>;...". Such a value is rewritten as
-- the sorted set once, with its TTL, on first contact; any other string (the key held another
-- algorithm's state) is dropped, as a state of another format already reads as a fresh key.
local function log_upgrade(key)
  local raw = redis.call('GET', key)
  local ttl = redis.call('PTTL', key)
  redis.call('DEL', key)
  if not raw or string.sub(raw, 1, 1) ~= 'L' then return end
  local total = 0
  for a, n in string.gmatch(raw, ';(%d+),(%d+)') do
    total = total + tonumber(n)
    redis.call('ZADD', key, a, int(total) .. ':' .. n)
  end
  if ttl > 0 and redis.call('EXISTS', key) == 1 then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Applies an admitted call's plan to the log at key: trims what left the window, replaces or
-- adds the newest entry, and sets the expiry (px milliseconds; nil deletes the empty log).
local function log_write(key, plan, px)
  if not px then
    redis.call('DEL', key)
    return
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(plan.edge))
  if plan.drop then redis.call('ZREM', key, plan.drop) end
  if plan.member then redis.call('ZADD', key, int(plan.at), plan.member) end
  redis.call('PEXPIRE', key, px)
end

-- What a compensating refund needs (see refund.lua): the entry this call left newest, and the
-- entry it replaced, as "Z<at> <member>" ("Z" when it replaced none). '' when nothing was added.
local function log_undo(plan)
  if not plan.member then return '', '' end
  local before = 'Z'
  if plan.drop then before = 'Z' .. int(plan.at) .. ' ' .. plan.drop end
  return before, 'Z' .. int(plan.at) .. ' ' .. plan.member
end

ALG[5] = function(limit, window, _, key, now, cost)
  local top = redis.pcall('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  if top.err then
    log_upgrade(key)
    top = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
  end
  -- An entry at or before edge has left the window: live entries have at + window > now.
  local edge = now - window
  local last, first, used = nil, nil, 0
  if #top > 0 then
    local newest = log_entry(top[1], top[2])
    if newest.at > edge then
      last = newest
      local f = redis.call('ZRANGEBYSCORE', key, '(' .. int(edge), '+inf',
        'WITHSCORES', 'LIMIT', 0, 1)
      first = log_entry(f[1], f[2])
      used = last.e - (first.e - first.n)
    end
  end
  local reset = 0
  if last then reset = max(last.at + window - now, 0) end
  local left = max(limit - used, 0)
  if cost > limit then
    return 0, limit, left, reset, -1, 2
  end
  if used + cost > limit then
    -- The oldest live entry through which the live units reach the excess: the first whose
    -- end is at least base + excess. Ends grow with rank, so search the live ranks.
    local target = first.e - first.n + used + cost - limit
    local lo = redis.call('ZCOUNT', key, '-inf', int(edge))
    local hi = redis.call('ZCARD', key) - 1
    while lo < hi do
      local mid = div((lo + hi), 2)
      local m = redis.call('ZRANGE', key, mid, mid)
      if log_entry(m[1], 0).e >= target then hi = mid else lo = mid + 1 end
    end
    local hit = redis.call('ZRANGE', key, lo, lo, 'WITHSCORES')
    return 0, limit, left, reset, log_entry(hit[1], hit[2]).at + window - now, 1
  end
  local plan = {edge = edge}
  local r = reset
  if cost > 0 then
    if last and last.at >= now then
      -- Same timestamp (or the clock stepped back): the newest entry grows.
      plan.drop, plan.at = last.member, last.at
      plan.member = int(last.e + cost) .. ':' .. int(last.n + cost)
    else
      plan.at = now
      plan.member = int((last and last.e or 0) + cost) .. ':' .. int(cost)
    end
    r = plan.at + window - now
  end
  return 1, limit, limit - used - cost, r, -1, 0, plan, now + r
end
