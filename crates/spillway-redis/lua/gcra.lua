-- GCRA (code 2), mirroring spillway-core algorithm/gcra.rs.
-- p1 = rate.tokens (units per microsecond), p2 = rate.micros (units per token), p3 = burst.
-- State: the theoretical arrival time tat + rem / rate.tokens microseconds, and the rate it
-- was written under; packed as 'g' and four doubles (text form "G:<tat>:<rem>:<p>:<u>").
-- Everything is measured from now ("debt" in scaled units), never from the epoch, so no
-- product involves the absolute time.

-- The state's numbers and the deadline stored after them (nil without one). The packed form
-- is 41 bytes with its deadline, 33 without (as written before deadlines were stored); the
-- tag unpacked with the numbers tells this algorithm's state from another of the same length.
local function gcra_read(raw)
  local size = #raw
  if size == 41 then
    local tag, t, r, p, u, d = unpack('<c1ddddd', raw)
    if tag == 'g' then return t, r, p, u, d end
  elseif size == 33 then
    local tag, t, r, p, u = unpack('<c1dddd', raw)
    if tag == 'g' then return t, r, p, u end
  end
  local t, r, p, u = string.match(raw, '^G:(%d+):(%d+):(%d+):(%d+)$')
  if t then return tonumber(t), tonumber(r), tonumber(p), tonumber(u) end
end

-- Whole tokens left under `debt` in a window of `window` units.
local function gcra_remaining(window, um, debt)
  return div(max(window - debt, 0), um)
end

-- How much the key has used at `now`, in scaled units (its TAT's distance from now; past
-- the window only after a charge after the fact), and the deadline the state was stored with.
local function gcra_debt(per, um, window, raw, now)
  local debt = 0
  local t, r, p, u, held
  if raw then t, r, p, u, held = gcra_read(raw) end
  if t then
    if t > now then
      debt = (t - now) * p + r
    elseif t == now then
      debt = r
    end
    -- Written under another rate of this limit: the debt it held now, in our units, rounded
    -- up, past the burst if it was, at most max_used (Gcra::carry_over).
    if p ~= per or u ~= um then
      local most = max_used(per, window)
      if u ~= um then
        debt = rescale(debt, u, um, most, true)
      elseif debt > most then
        debt = most
      end
    end
  end
  return debt, held
end

ALG[2] = function(per, um, burst, raw, now, cost)
  local window = um * burst
  local debt, held = gcra_debt(per, um, window, raw, now)
  if cost > burst then
    return 0, burst, gcra_remaining(window, um, debt), ceil_div(debt, per), -1, 2
  end
  local need = um * cost
  -- debt + need <= window, written so the sum is formed only when it is small.
  if need <= window - debt then
    local nd = debt + need
    local q, rem = divmod(nd, per)
    local fresh_in = ceil_div(nd, per)
    local d = deadline(now + fresh_in, held, now)
    return 1, burst, gcra_remaining(window, um, nd), fresh_in, -1, 0,
      pack('<c1ddddd', 'g', now + q, rem, per, um, d), now + fresh_in, d, held
  end
  return 0, burst, gcra_remaining(window, um, debt), ceil_div(debt, per),
    ceil_div(need - (window - debt), per), 1
end

-- GCRA's charge (Gcra::charge): the TAT moves on by the whole cost, past the burst if need
-- be, up to one burst plus ten years of emission (at most 2^53).
CHG[2] = function(per, um, burst, raw, now, cost)
  local window = um * burst
  local debt, held = gcra_debt(per, um, window, raw, now)
  local need = min(um * cost, MAX_SCALED)
  local most = max_used(per, window)
  local used
  if need >= most - min(debt, most) then
    used = most
  else
    used = debt + need
  end
  local q, rem = divmod(used, per)
  local fresh_in = ceil_div(used, per)
  local d = deadline(now + fresh_in, held, now)
  return pack('<c1ddddd', 'g', now + q, rem, per, um, d), now + fresh_in, d, held
end
