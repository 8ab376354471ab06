-- Fixed window (code 3), mirroring spillway-core algorithm/fixed_window.rs.
-- p1 = limit, p2 = window (microseconds). State: the window's start and its count; packed as
-- 'f' and two doubles (text form "F:<start>:<count>").

-- The state's numbers and the deadline stored after them (nil without one). The packed form
-- is 25 bytes with its deadline, 17 without (as written before deadlines were stored); the
-- tag unpacked with the numbers tells this algorithm's state from another of the same length.
local function fw_read(raw)
  local size = #raw
  if size == 25 then
    local tag, s, c, d = unpack('<c1ddd', raw)
    if tag == 'f' then return s, c, d end
  elseif size == 17 then
    local tag, s, c = unpack('<c1dd', raw)
    if tag == 'f' then return s, c end
  end
  local s, c = string.match(raw, '^F:(%d+):(%d+)$')
  if s then return tonumber(s), tonumber(c) end
end

ALG[3] = function(limit, window, _, raw, now, cost)
  local _, off = divmod(now, window)
  local start, count = now - off, 0
  local s, c, held
  if raw then s, c, held = fw_read(raw) end
  -- The stored window lasts one window length from its start: the current aligned window (or
  -- a later one, if the clock stepped back), or, after the window's length changed, the
  -- counted window until one new length after its start.
  if s and s + window > now then
    start, count = s, c
  end
  local finish = start + window
  local reset = max(finish - now, 0)
  local left = max(limit - count, 0)
  if cost > limit then
    if count == 0 then reset = 0 end
    return 0, limit, left, reset, -1, 2
  end
  if count + cost <= limit then
    local used = count + cost
    if used == 0 then reset = 0 end
    local d = deadline(finish, held, now)
    return 1, limit, limit - used, reset, -1, 0,
      pack('<c1ddd', 'f', start, used, d), finish, d, held
  end
  return 0, limit, left, reset, reset, 1
end

-- The fixed window's charge (FixedWindow::charge): the count may pass the limit (up to 2^53),
-- and nothing is admitted until the window ends.
CHG[3] = function(limit, window, _, raw, now, cost)
  local _, off = divmod(now, window)
  local start, count = now - off, 0
  local s, c, held
  if raw then s, c, held = fw_read(raw) end
  if s and s + window > now then
    start, count = s, c
  end
  count = min(count + cost, MAX_SCALED)
  local finish = start + window
  local d = deadline(finish, held, now)
  return pack('<c1ddd', 'f', start, count, d), finish, d, held
end
