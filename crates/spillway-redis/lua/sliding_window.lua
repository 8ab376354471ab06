-- Sliding window counter (code 4), mirroring spillway-core algorithm/sliding_window.rs.
-- p1 = limit (at most 2^32 - 1), p2 = window (microseconds). State: the current window's
-- start and the previous and current windows' counts; packed as 'w' and three doubles (text
-- form "W:<start>:<prev>:<curr>").
--
-- Rust compares prev * (w - elapsed) + curr * w against limit * w in 128-bit integers; those
-- products can pass 2^53 here. Dividing through by w turns every comparison into one against
-- ceil(prev * (w - elapsed) / w), which muldiv computes exactly.

-- The state's numbers and the deadline stored after them (nil without one). The packed form
-- is 33 bytes with its deadline, 25 without (as written before deadlines were stored); the
-- tag unpacked with the numbers tells this algorithm's state from another of the same length.
local function sw_read(raw)
  local size = #raw
  if size == 33 then
    local tag, s, p, c, d = unpack('<c1dddd', raw)
    if tag == 'w' then return s, p, c, d end
  elseif size == 25 then
    local tag, s, p, c = unpack('<c1ddd', raw)
    if tag == 'w' then return s, p, c end
  end
  local s, p, c = string.match(raw, '^W:(%d+):(%d+):(%d+)$')
  if s then return tonumber(s), tonumber(p), tonumber(c) end
end

-- Microseconds until a window starting at `start` with counts `prev` and `curr` weighs
-- nothing.
local function sw_reset(w, start, prev, curr, now)
  if curr > 0 then
    return start + 2 * w - now
  elseif prev > 0 then
    return start + w - now
  end
  return 0
end

-- The earliest elapsed time into a window at which old weighs at most room:
-- old x (w - e) <= room x w, i.e. e >= w - floor(room x w / old).
local function sw_free_from(w, old, room)
  if old == 0 or room >= old then return 0 end
  local q = muldiv(room, w, old)
  return w - q
end

ALG[4] = function(limit, w, _, raw, now, cost)
  local _, off = divmod(now, w)
  local start, prev, curr = now - off, 0, 0
  local s, p, c, held
  if raw then s, p, c, held = sw_read(raw) end
  -- A state that counts nothing is a fresh key, wherever it started.
  if s and (p > 0 or c > 0) then
    -- Current while it lasts one window length from its start, then the previous window for
    -- one more length (after a change of length the windows continue from its end).
    if s + w > now then
      start, prev, curr = s, p, c
    elseif s + 2 * w > now then
      start, prev = s + w, c
    end
  end
  local elapsed = max(now - start, 0)
  local pq, pr = muldiv(prev, w - elapsed, w)
  if pr > 0 then pq = pq + 1 end -- the previous window's weight, rounded up
  local left = max(limit - curr - pq, 0)
  if cost > limit then
    return 0, limit, left, sw_reset(w, start, prev, curr, now), -1, 2
  end
  if pq <= limit - curr - cost then
    local next_curr = curr + cost
    local reset = sw_reset(w, start, prev, next_curr, now)
    local d = deadline(now + reset, held, now)
    return 1, limit, max(limit - next_curr - pq, 0), reset, -1, 0,
      pack('<c1dddd', 'w', start, prev, next_curr, d), now + reset, d, held
  end
  local retry_at
  if curr + cost <= limit then
    local e = sw_free_from(w, prev, limit - curr - cost)
    if e < w then retry_at = start + e end
  end
  if not retry_at then
    retry_at = start + w + sw_free_from(w, curr, limit - cost)
  end
  return 0, limit, left, sw_reset(w, start, prev, curr, now), retry_at - now, 1
end

-- The sliding window's charge (SlidingWindow::charge): the current window's count may pass
-- the limit (up to 2^32 - 1, the state's width).
CHG[4] = function(limit, w, _, raw, now, cost)
  local _, off = divmod(now, w)
  local start, prev, curr = now - off, 0, 0
  local s, p, c, held
  if raw then s, p, c, held = sw_read(raw) end
  if s and (p > 0 or c > 0) then
    if s + w > now then
      start, prev, curr = s, p, c
    elseif s + 2 * w > now then
      start, prev = s + w, c
    end
  end
  curr = min(curr + cost, 4294967295)
  local need = now + sw_reset(w, start, prev, curr, now)
  local d = deadline(need, held, now)
  return pack('<c1dddd', 'w', start, prev, curr, d), need, d, held
end
