-- Leaky bucket (code 6), mirroring spillway-core algorithm/leaky_bucket.rs.
-- p1 = drain.tokens (units drained per microsecond), p2 = drain.micros (units per request
-- unit), p3 = capacity. State "B:<level>:<last_leak>:<units per request unit it was written
-- in>".
ALG[6] = function(rt, um, capacity, raw, now, cost)
  local cap = um * capacity
  local level, last = 0, now
  if raw then
    local l, t, u = string.match(raw, '^B:(%d+):(%d+):(%d+)$')
    if l then
      l, t, u = tonumber(l), tonumber(t), tonumber(u)
      -- Written under other numbers of this limit: the level it held, in our units,
      -- rounded up and at most the capacity (LeakyBucket::carry_over).
      if u ~= um then l = rescale(l, u, um, cap, true) end
      local elapsed = max(now - t, 0)
      -- Drained empty once elapsed * rate >= level; only the smaller product is formed.
      if elapsed >= ceil_div(l, rt) then
        level = 0
      else
        level = l - elapsed * rt
      end
      last = max(now, t)
    end
  end
  -- A level above a smaller capacity (kept from larger numbers) has no space left.
  local function space(x) return floor(max(cap - x, 0) / um) end
  local function empty_in(x) return ceil_div(x, rt) end
  if cost > capacity then
    return too_costly(capacity, space(level), empty_in(level))
  end
  local need = um * cost
  if need <= cap - level then
    local poured = level + need
    return allow(capacity, space(poured), empty_in(poured)),
      'B:' .. int(poured) .. ':' .. int(last) .. ':' .. int(um), last + empty_in(poured)
  end
  return over_limit(capacity, space(level), empty_in(level),
    ceil_div(need - (cap - level), rt))
end
