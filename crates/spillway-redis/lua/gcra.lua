-- GCRA (code 2), mirroring spillway-core algorithm/gcra.rs.
-- p1 = rate.tokens (units per microsecond), p2 = rate.micros (units per token), p3 = burst.
-- State "G:<tat>:<rem>": the theoretical arrival time tat + rem / rate.tokens microseconds.
-- Everything is measured from now ("debt" in scaled units), never from the epoch, so no
-- product involves the absolute time.
ALG[2] = function(per, um, burst, raw, now, cost)
  local debt = 0
  if raw then
    local t, r = string.match(raw, '^G:(%d+):(%d+)$')
    if t then
      t, r = tonumber(t), tonumber(r)
      if t > now then
        debt = (t - now) * per + r
      elseif t == now then
        debt = r
      end
    end
  end
  local window = um * burst
  local function remaining(d) return floor(max(window - d, 0) / um) end
  local function fresh_in(d) return ceil_div(d, per) end
  if cost > burst then
    return too_costly(burst, remaining(debt), fresh_in(debt))
  end
  local need = um * cost
  -- debt + need <= window, written so the sum is formed only when it is small.
  if need <= window - debt then
    local nd = debt + need
    local q, r = divmod(nd, per)
    return allow(burst, remaining(nd), fresh_in(nd)),
      'G:' .. int(now + q) .. ':' .. int(r), now + fresh_in(nd)
  end
  return over_limit(burst, remaining(debt), fresh_in(debt),
    ceil_div(need - (window - debt), per))
end
