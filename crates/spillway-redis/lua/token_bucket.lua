-- Token bucket (code 1), mirroring spillway-core algorithm/token_bucket.rs.
-- p1 = rate.tokens (scaled units refilled per microsecond), p2 = rate.micros (units per
-- token), p3 = burst. State: tokens, last refill, and the rate.micros and burst it was
-- written under; packed as 't' and four doubles (text form "T:<t>:<l>:<u>:<b>").

local function tb_read(raw)
  if #raw == 33 and string.byte(raw, 1) == 116 then -- 't'
    local _, t, l, u, b = struct.unpack('<c1dddd', raw)
    return t, l, u, b
  end
  local t, l, u, b = string.match(raw, '^T:(%d+):(%d+):(%d+):(%d+)$')
  if t then return tonumber(t), tonumber(l), tonumber(u), tonumber(b) end
end

ALG[1] = function(rt, um, burst, raw, now, cost)
  local capacity = um * burst
  local tokens, last = capacity, now
  local t, l, u, b
  if raw then t, l, u, b = tb_read(raw) end
  if t then
    -- Written under other numbers of this limit: what it had used (its capacity less its
    -- tokens), rounded up to our units, is taken from our capacity (TokenBucket::carry_over).
    if u ~= um or b ~= burst then
      local used = math.max(u * b - t, 0)
      if u ~= um then used = rescale(used, u, um, capacity, true) end
      t = math.max(capacity - used, 0)
    end
    local deficit = capacity - t
    -- Refill without forming elapsed * rate when it could pass 2^53: a bucket idle for at
    -- least ceil(deficit / rate) is simply full.
    local elapsed = math.max(now - l, 0)
    if deficit <= 0 or elapsed >= ceil_div(deficit, rt) then
      tokens = capacity
    else
      tokens = t + elapsed * rt
    end
    last = math.max(now, l)
  end
  if cost > burst then
    return 0, burst, math.floor(tokens / um), ceil_div(capacity - tokens, rt), -1, 2
  end
  local need = um * cost
  if tokens >= need then
    local left = tokens - need
    local full_in = ceil_div(capacity - left, rt)
    return 1, burst, math.floor(left / um), full_in, -1, 0,
      struct.pack('<c1dddd', 't', left, last, um, burst), last + full_in
  end
  return 0, burst, math.floor(tokens / um), ceil_div(capacity - tokens, rt),
    ceil_div(need - tokens, rt), 1
end
