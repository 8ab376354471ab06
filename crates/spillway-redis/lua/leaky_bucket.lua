-- Leaky bucket (code 6), mirroring spillway-core algorithm/leaky_bucket.rs.
-- p1 = drain.tokens (units drained per microsecond), p2 = drain.micros (units per request
-- unit), p3 = capacity. State "B:<level>:<last_leak>".
ALG[6] = function(rt, um, capacity, raw, now, cost)
  local cap = um * capacity
  local level, last = 0, now
  if raw then
    local l, t = string.match(raw, '^B:(%d+):(%d+)$')
    if l then
      l, t = tonumber(l), tonumber(t)
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
  local function space(x) return floor((cap - x) / um) end
  local function empty_in(x) return ceil_div(x, rt) end
  if cost > capacity then
    return too_costly(capacity, space(level), empty_in(level))
  end
  local need = um * cost
  if need <= cap - level then
    local poured = level + need
    return allow(capacity, space(poured), empty_in(poured)),
      'B:' .. int(poured) .. ':' .. int(last), last + empty_in(poured)
  end
  return over_limit(capacity, space(level), empty_in(level),
    ceil_div(need - (cap - level), rt))
end
