-- Fixed window (code 3), mirroring spillway-core algorithm/fixed_window.rs.
-- p1 = limit, p2 = window (microseconds). State "F:<start>:<count>".
ALG[3] = function(limit, window, _, raw, now, cost)
  local _, off = divmod(now, window)
  local start, count = now - off, 0
  if raw then
    local s, c = string.match(raw, '^F:(%d+):(%d+)$')
    -- The stored window lasts one window length from its start: the current aligned window
    -- (or a later one, if the clock stepped back), or, after the window's length changed,
    -- the counted window until one new length after its start.
    if s and tonumber(s) + window > now then
      start, count = tonumber(s), tonumber(c)
    end
  end
  local finish = start + window
  local reset = max(finish - now, 0)
  local left = max(limit - count, 0)
  if cost > limit then
    if count == 0 then reset = 0 end
    return too_costly(limit, left, reset)
  end
  if count + cost <= limit then
    local used = count + cost
    if used == 0 then reset = 0 end
    return allow(limit, limit - used, reset), 'F:' .. int(start) .. ':' .. int(used), finish
  end
  return over_limit(limit, left, reset, reset)
end
