-- Token bucket (code 1), mirroring spillway-core algorithm/token_bucket.rs.
-- p1 = rate.tokens (scaled units refilled per microsecond), p2 = rate.micros (units per
-- token), p3 = burst. State: tokens, last refill, and the rate.micros and burst it was
-- written under; packed as 't' and four doubles (text form "T:<t>:<l>:<u>:<b>").

-- The state's numbers and the deadline stored after them (nil without one). The packed form
-- is 41 bytes with its deadline, 33 without (as written before deadlines were stored); the
-- tag unpacked with the numbers tells this algorithm's state from another of the same length.
local function tb_read(raw)
  local size = #raw
  if size == 41 then
    local tag, t, l, u, b, d = unpack('<c1ddddd', raw)
    if tag == 't' then return t, l, u, b, d end
  elseif size == 33 then
    local tag, t, l, u, b = unpack('<c1dddd', raw)
    if tag == 't' then return t, l, u, b end
  end
  local t, l, u, b = string.match(raw, '^T:(%d+):(%d+):(%d+):(%d+)$')
  if t then return tonumber(t), tonumber(l), tonumber(u), tonumber(b) end
end

-- The most a key may owe in scaled units (TokenBucket::max_debt).
local function tb_max_debt(rt, capacity)
  return max_used(rt, capacity) - capacity
end

-- The bucket at `now` (TokenBucket::standing): tokens, or no tokens and a debt, and the
-- deadline the state was stored with. A bucket in debt is stored with its last refill in the
-- future, when it will hold `t` tokens.
local function tb_standing(rt, um, burst, raw, now)
  local capacity = um * burst
  local t, l, u, b, held
  if raw then t, l, u, b, held = tb_read(raw) end
  if not t then return capacity, 0 end
  -- Written under other numbers of this limit: what it had used (its capacity less its
  -- tokens), rounded up to our units, is taken from our capacity, and what exceeds it stays
  -- owed (TokenBucket::carry_over).
  if u ~= um or b ~= burst then
    local used = max(u * b - t, 0)
    local most = max_used(rt, capacity)
    if u ~= um then used = rescale(used, u, um, most, true) end
    used = min(used, most)
    if used <= capacity then
      t = capacity - used
    else
      -- What exceeds our capacity stays owed, repaid from the last refill.
      local extra = used - capacity
      local q = ceil_div(extra, rt)
      t, l = rt - (extra - (q - 1) * rt), l + q
    end
  end
  if l > now then
    local owed = (l - now) * rt
    if t >= owed then return min(t - owed, capacity), 0, held end
    return 0, min(owed - t, tb_max_debt(rt, capacity)), held
  end
  local deficit = capacity - t
  -- Refill without forming elapsed * rate when it could pass 2^53: a bucket idle for at
  -- least ceil(deficit / rate) is simply full.
  local elapsed = now - l
  if deficit <= 0 or elapsed >= ceil_div(deficit, rt) then return capacity, 0, held end
  return t + elapsed * rt, 0, held
end

-- The packed state holding `tokens`, or owing `debt`, at `now` (TokenBucket::state_of), and
-- its deadline (full again at `need`): a debt is repaid q microseconds from now, with
-- rt - (debt - (q - 1) rt) units refilled by then (formed without q * rt, which may pass
-- 2^53).
local function tb_state(um, burst, rt, tokens, debt, now, need, held)
  local d = deadline(need, held, now)
  if debt == 0 then return pack('<c1ddddd', 't', tokens, now, um, burst, d), d end
  local q = ceil_div(debt, rt)
  return pack('<c1ddddd', 't', rt - (debt - (q - 1) * rt), now + q, um, burst, d), d
end

ALG[1] = function(rt, um, burst, raw, now, cost)
  local capacity = um * burst
  local tokens, debt, held = tb_standing(rt, um, burst, raw, now)
  local full_in = ceil_div(capacity - tokens + debt, rt)
  if cost > burst then
    return 0, burst, div(tokens, um), full_in, -1, 2
  end
  local need = um * cost
  if debt == 0 and tokens >= need then
    local left = tokens - need
    local left_full = ceil_div(capacity - left, rt)
    local state, d = tb_state(um, burst, rt, left, 0, now, now + left_full, held)
    return 1, burst, div(left, um), left_full, -1, 0, state, now + left_full, d, held
  end
  return 0, burst, div(tokens, um), full_in,
    ceil_div(need - min(tokens, need) + debt, rt), 1
end

CHG[1] = function(rt, um, burst, raw, now, cost)
  local capacity = um * burst
  local tokens, debt, held = tb_standing(rt, um, burst, raw, now)
  local need = min(um * cost, MAX_SCALED)
  local max_debt = tb_max_debt(rt, capacity)
  if debt == 0 and tokens >= need then
    tokens = tokens - need
  elseif need - min(tokens, need) >= max_debt - min(debt, max_debt) then
    tokens, debt = 0, max_debt
  else
    tokens, debt = 0, debt + need - min(tokens, need)
  end
  local full_in = ceil_div(capacity - tokens + debt, rt)
  local state, d = tb_state(um, burst, rt, tokens, debt, now, now + full_in, held)
  return state, now + full_in, d, held
end
