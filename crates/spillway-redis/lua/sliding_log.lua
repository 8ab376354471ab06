-- Sliding log (code 5), mirroring spillway-core algorithm/sliding_log.rs.
-- p1 = limit, p2 = window (microseconds). State "L" followed by ";<at>,<cost>" per admitted
-- timestamp, oldest first; entries that left the window are dropped on every write, so the
-- string holds at most `limit` entries.
ALG[5] = function(limit, window, _, raw, now, cost)
  local ats, ns = {}, {}
  local used = 0
  if raw and string.sub(raw, 1, 1) == 'L' then
    for a, n in string.gmatch(raw, ';(%d+),(%d+)') do
      a, n = tonumber(a), tonumber(n)
      if a + window > now then
        ats[#ats + 1], ns[#ns + 1] = a, n
        used = used + n
      end
    end
  end
  local function reset()
    local k = #ats
    if k == 0 then return 0 end
    return max(ats[k] + window - now, 0)
  end
  local left = max(limit - used, 0)
  if cost > limit then
    return too_costly(limit, left, reset())
  end
  if used + cost > limit then
    local excess, retry = used + cost - limit, window
    for i = 1, #ats do
      if ns[i] >= excess then
        retry = ats[i] + window - now
        break
      end
      excess = excess - ns[i]
    end
    return over_limit(limit, left, reset(), retry)
  end
  local k = #ats
  if k > 0 and ats[k] >= now then
    ns[k] = ns[k] + cost
  elseif cost > 0 then
    ats[k + 1], ns[k + 1] = now, cost
  end
  local parts = {'L'}
  for i = 1, #ats do
    parts[#parts + 1] = ';' .. int(ats[i]) .. ',' .. int(ns[i])
  end
  local r = reset()
  return allow(limit, limit - used - cost, r), table.concat(parts), now + r
end
