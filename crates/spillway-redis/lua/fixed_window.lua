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

-- Where the window counted from `s` ends (FixedWindow::end_of): one length after it, rounded
-- up to the next boundary of the length. One length for a window this limit opened; a window
-- carried over from another length goes on to the boundary, so the aligned window it overlaps
-- never starts again at 0.
local function fw_end(s, window)
  return ceil_div(s + window, window) * window
end

ALG[3] = function(limit, window, _, raw, now, cost)
  local _, off = divmod(now, window)
  local start, count = now - off, 0
  local s, c, held
  if raw then s, c, held = fw_read(raw) end
  -- The stored window lasts until fw_end: the current aligned window (or a later one, if the
  -- clock stepped back), or, after the window's length changed, the counted window until the
  -- first boundary of the new length one new length after its start.
  if s and fw_end(s, window) > now then
    start, count = s, c
  end
  local finish = fw_end(start, window)
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
  if s and fw_end(s, window) > now then
    start, count = s, c
  end
  count = min(count + cost, MAX_SCALED)
  local finish = fw_end(start, window)
  local d = deadline(finish, held, now)
  return pack('<c1ddd', 'f', start, count, d), finish, d, held
end
