-- Sliding window counter (code 4), mirroring spillway-core algorithm/sliding_window.rs.
-- p1 = limit (at most 2^32 - 1), p2 = window (microseconds).
-- State "W:<start>:<prev>:<curr>".
--
-- Rust compares prev * (w - elapsed) + curr * w against limit * w in 128-bit integers; those
-- products can pass 2^53 here. Dividing through by w turns every comparison into one against
-- ceil(prev * (w - elapsed) / w), which muldiv computes exactly.
ALG[4] = function(limit, w, _, raw, now, cost)
  local _, off = divmod(now, w)
  local aligned = now - off
  local start, prev, curr = aligned, 0, 0
  if raw then
    local s, p, c = string.match(raw, '^W:(%d+):(%d+):(%d+)$')
    -- A state that counts nothing is a fresh key, wherever it started.
    if s and (tonumber(p) > 0 or tonumber(c) > 0) then
      s, p, c = tonumber(s), tonumber(p), tonumber(c)
      -- Current while it lasts one window length from its start, then the previous window
      -- for one more length (after a change of length the windows continue from its end).
      if s + w > now then
        start, prev, curr = s, p, c
      elseif s + 2 * w > now then
        start, prev = s + w, c
      end
    end
  end
  local elapsed = max(now - start, 0)
  local pq, pr = muldiv(prev, w - elapsed, w)
  if pr > 0 then pq = pq + 1 end -- the previous window's weight, rounded up
  local function remaining(c) return max(limit - c - pq, 0) end
  local function reset(c)
    if c > 0 then
      return start + 2 * w - now
    elseif prev > 0 then
      return start + w - now
    end
    return 0
  end
  -- The earliest elapsed time into a window at which old weighs at most room: old x (w - e)
  -- <= room x w, i.e. e >= w - floor(room x w / old).
  local function free_from(old, room)
    if old == 0 or room >= old then return 0 end
    local q = muldiv(room, w, old)
    return w - q
  end
  if cost > limit then
    return too_costly(limit, remaining(curr), reset(curr))
  end
  if pq <= limit - curr - cost then
    local next_curr = curr + cost
    return allow(limit, remaining(next_curr), reset(next_curr)),
      'W:' .. int(start) .. ':' .. int(prev) .. ':' .. int(next_curr), now + reset(next_curr)
  end
  local retry_at
  if curr + cost <= limit then
    local e = free_from(prev, limit - curr - cost)
    if e < w then retry_at = start + e end
  end
  if not retry_at then
    retry_at = start + w + free_from(curr, limit - cost)
  end
  return over_limit(limit, remaining(curr), reset(curr), retry_at - now)
end
