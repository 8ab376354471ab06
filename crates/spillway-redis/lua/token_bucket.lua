-- Token bucket (code 1), mirroring spillway-core algorithm/token_bucket.rs.
-- p1 = rate.tokens (scaled units refilled per microsecond), p2 = rate.micros (units per
-- token), p3 = burst. State "T:<tokens>:<last_refill>:<rate.micros>:<burst>", the last two
-- being the numbers it was written under.
ALG[1] = function(rt, um, burst, raw, now, cost)
  local capacity = um * burst
  local tokens, last = capacity, now
  if raw then
    local t, l, u, b = string.match(raw, '^T:(%d+):(%d+):(%d+):(%d+)$')
    if t then
      t, l, u, b = tonumber(t), tonumber(l), tonumber(u), tonumber(b)
      -- Written under other numbers of this limit: what it had used (its capacity less its
      -- tokens), rounded up to our units, is taken from our capacity
      -- (TokenBucket::carry_over).
      if u ~= um or b ~= burst then
        local used = max(u * b - t, 0)
        if u ~= um then used = rescale(used, u, um, capacity, true) end
        t = max(capacity - used, 0)
      end
      local deficit = capacity - t
      -- Refill without forming elapsed * rate when it could pass 2^53: a bucket idle for
      -- at least ceil(deficit / rate) is simply full.
      local elapsed = max(now - l, 0)
      if deficit <= 0 or elapsed >= ceil_div(deficit, rt) then
        tokens = capacity
      else
        tokens = t + elapsed * rt
      end
      last = max(now, l)
    end
  end
  local function full_in(x) return ceil_div(capacity - x, rt) end
  if cost > burst then
    return too_costly(burst, floor(tokens / um), full_in(tokens))
  end
  local need = um * cost
  if tokens >= need then
    local left = tokens - need
    return allow(burst, floor(left / um), full_in(left)),
      'T:' .. int(left) .. ':' .. int(last) .. ':' .. int(um) .. ':' .. int(burst),
      last + full_in(left)
  end
  return over_limit(burst, floor(tokens / um), full_in(tokens), ceil_div(need - tokens, rt))
end
