-- GCRA (code 2), mirroring spillway-core algorithm/gcra.rs.
-- p1 = rate.tokens (units per microsecond), p2 = rate.micros (units per token), p3 = burst.
-- State "G:<tat>:<rem>:<rate.tokens>:<rate.micros>": the theoretical arrival time
-- tat + rem / rate.tokens microseconds, and the rate it was written under.
-- Everything is measured from now ("debt" in scaled units), never from the epoch, so no
-- product involves the absolute time.
ALG[2] = function(per, um, burst, raw, now, cost)
  local debt = 0
  local window = um * burst
  if raw then
    local t, r, p, u = string.match(raw, '^G:(%d+):(%d+):(%d+):(%d+)$')
    if t then
      t, r, p, u = tonumber(t), tonumber(r), tonumber(p), tonumber(u)
      if t > now then
        debt = (t - now) * p + r
      elseif t == now then
        debt = r
      end
      -- Written under another rate of this limit: the debt it held now, in our units,
      -- rounded up and at most one whole burst (Gcra::carry_over).
      if p ~= per or u ~= um then
        if u ~= um then
          debt = rescale(debt, u, um, window, true)
        elseif debt > window then
          debt = window
        end
      end
    end
  end
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
      'G:' .. int(now + q) .. ':' .. int(r) .. ':' .. int(per) .. ':' .. int(um),
      now + fresh_in(nd)
  end
  return over_limit(burst, remaining(debt), fresh_in(debt),
    ceil_div(need - (window - debt), per))
end
