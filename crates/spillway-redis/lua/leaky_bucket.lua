-- Leaky bucket (code 6), mirroring spillway-core algorithm/leaky_bucket.rs.
-- p1 = drain.tokens (units drained per microsecond), p2 = drain.micros (units per request
-- unit), p3 = capacity. State: the level, the last leak, and the units per request unit it
-- was written in; packed as 'b' and three doubles (text form "B:<level>:<last>:<u>").

-- The state's numbers and the deadline stored after them (nil without one). The packed form
-- is 33 bytes with its deadline, 25 without (as written before deadlines were stored); the
-- tag unpacked with the numbers tells this algorithm's state from another of the same length.
local function lb_read(raw)
  local size = #raw
  if size == 33 then
    local tag, l, t, u, d = unpack('<c1dddd', raw)
    if tag == 'b' then return l, t, u, d end
  elseif size == 25 then
    local tag, l, t, u = unpack('<c1ddd', raw)
    if tag == 'b' then return l, t, u end
  end
  local l, t, u = string.match(raw, '^B:(%d+):(%d+):(%d+)$')
  if l then return tonumber(l), tonumber(t), tonumber(u) end
end

-- Whole request units of space above `level`; a level above a smaller capacity (kept from
-- larger numbers) has none.
local function lb_space(cap, um, level)
  return div(max(cap - level, 0), um)
end

-- The level at `now`, the time it is counted from, and the deadline the state was stored
-- with.
local function lb_level(rt, um, cap, raw, now)
  local l, t, u, held
  if raw then l, t, u, held = lb_read(raw) end
  if not l then return 0, now end
  -- Written under other numbers of this limit: the level it held, in our units, rounded up
  -- and above the capacity if it was, at most max_used (LeakyBucket::carry_over).
  if u ~= um then l = rescale(l, u, um, max_used(rt, cap), true) end
  local elapsed = max(now - t, 0)
  -- Drained empty once elapsed * rate >= level; only the smaller product is formed.
  if elapsed >= ceil_div(l, rt) then return 0, max(now, t), held end
  return l - elapsed * rt, max(now, t), held
end

ALG[6] = function(rt, um, capacity, raw, now, cost)
  local cap = um * capacity
  local level, last, held = lb_level(rt, um, cap, raw, now)
  if cost > capacity then
    return 0, capacity, lb_space(cap, um, level), ceil_div(level, rt), -1, 2
  end
  local need = um * cost
  if need <= cap - level then
    local poured = level + need
    local empty_in = ceil_div(poured, rt)
    local d = deadline(last + empty_in, held, now)
    return 1, capacity, lb_space(cap, um, poured), empty_in, -1, 0,
      pack('<c1dddd', 'b', poured, last, um, d), last + empty_in, d, held
  end
  return 0, capacity, lb_space(cap, um, level), ceil_div(level, rt),
    ceil_div(need - (cap - level), rt), 1
end

-- The leaky bucket's charge (LeakyBucket::charge): the level may rise above the capacity,
-- up to the capacity plus ten years of drain (at most 2^53).
CHG[6] = function(rt, um, capacity, raw, now, cost)
  local cap = um * capacity
  local level, last, held = lb_level(rt, um, cap, raw, now)
  local need = min(um * cost, MAX_SCALED)
  local max_level = max_used(rt, cap)
  if need >= max_level - min(level, max_level) then
    level = max_level
  else
    level = level + need
  end
  local empty_in = ceil_div(level, rt)
  local d = deadline(last + empty_in, held, now)
  return pack('<c1dddd', 'b', level, last, um, d), last + empty_in, d, held
end
