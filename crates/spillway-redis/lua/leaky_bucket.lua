-- Leaky bucket (code 6), mirroring spillway-core algorithm/leaky_bucket.rs.
-- p1 = drain.tokens (units drained per microsecond), p2 = drain.micros (units per request
-- unit), p3 = capacity. State: the level, the last leak, and the units per request unit it
-- was written in; packed as 'b' and three doubles (text form "B:<level>:<last>:<u>").

local function lb_read(raw)
  if #raw == 25 and string.byte(raw, 1) == 98 then -- 'b'
    local _, l, t, u = struct.unpack('<c1ddd', raw)
    return l, t, u
  end
  local l, t, u = string.match(raw, '^B:(%d+):(%d+):(%d+)$')
  if l then return tonumber(l), tonumber(t), tonumber(u) end
end

-- Whole request units of space above `level`; a level above a smaller capacity (kept from
-- larger numbers) has none.
local function lb_space(cap, um, level)
  return math.floor(math.max(cap - level, 0) / um)
end

ALG[6] = function(rt, um, capacity, raw, now, cost)
  local cap = um * capacity
  local level, last = 0, now
  local l, t, u
  if raw then l, t, u = lb_read(raw) end
  if l then
    -- Written under other numbers of this limit: the level it held, in our units, rounded
    -- up and at most the capacity (LeakyBucket::carry_over).
    if u ~= um then l = rescale(l, u, um, cap, true) end
    local elapsed = math.max(now - t, 0)
    -- Drained empty once elapsed * rate >= level; only the smaller product is formed.
    if elapsed >= ceil_div(l, rt) then
      level = 0
    else
      level = l - elapsed * rt
    end
    last = math.max(now, t)
  end
  if cost > capacity then
    return 0, capacity, lb_space(cap, um, level), ceil_div(level, rt), -1, 2
  end
  local need = um * cost
  if need <= cap - level then
    local poured = level + need
    local empty_in = ceil_div(poured, rt)
    return 1, capacity, lb_space(cap, um, poured), empty_in, -1, 0,
      struct.pack('<c1ddd', 'b', poured, last, um), last + empty_in
  end
  return 0, capacity, lb_space(cap, um, level), ceil_div(level, rt),
    ceil_div(need - (cap - level), rt), 1
end
