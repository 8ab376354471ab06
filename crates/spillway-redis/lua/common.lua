-- Shared helpers for the algorithm functions below. Redis runs Lua 5.1, whose numbers are
-- doubles: a whole number is exact only below 2^53. Every helper here takes and returns whole
-- numbers within that range and never forms a larger intermediate, so the results are the
-- same integers the Rust functions in spillway-core compute.

local floor = math.floor
local max = math.max

-- Quotient and remainder of a / b for whole 0 <= a <= 2^53 and b > 0. A correctly rounded
-- a / b never crosses an integer boundary while a <= 2^53, so floor() gives the true quotient.
local function divmod(a, b)
  local q = floor(a / b)
  return q, a - q * b
end

-- a / b rounded up (Rust's div_ceil).
local function ceil_div(a, b)
  local q, r = divmod(a, b)
  if r > 0 then q = q + 1 end
  return q
end

-- floor(a * b / c) and its remainder, for whole a < 2^(top + 1) and b, c < 2^53 whose
-- result stays below 2^53, without forming a * b (which may reach 2^106). Binary long
-- multiplication keeps x * b = q * c + r with r < c while the bits of a are shifted in one at
-- a time; every step is exact.
local function muldiv_bits(a, b, c, top)
  local bq, br = divmod(b, c)
  local q, r = 0, 0
  for i = top, 0, -1 do
    q = q * 2
    if r >= c - r then
      r = r - (c - r)
      q = q + 1
    else
      r = r + r
    end
    local bit = 2 ^ i
    if a >= bit then
      a = a - bit
      q = q + bq
      if br >= c - r then
        r = br - (c - r)
        q = q + 1
      else
        r = r + br
      end
    end
  end
  return q, r
end

-- muldiv_bits for a < 2^32 (the sliding window's counts).
local function muldiv(a, b, c)
  return muldiv_bits(a, b, c, 31)
end

-- An amount kept in scaled units of `from` units per token, in units of `to` per token:
-- floor(x * to / from) (up = false) or its ceiling (up = true), and `cap` whenever that
-- would reach it. Mirrors the carry_over functions of spillway-core (algorithm/carry.rs):
-- a state written under other numbers of the same limit. x < 2^53; cap = to * n for whole n.
local function rescale(x, from, to, cap, up)
  if floor(x / from) >= cap / to then return cap end
  -- Here x < (cap / to) * from, so the result stays below cap <= 2^53.
  local q, r = muldiv_bits(x, to, from, 52)
  if up and r > 0 then q = q + 1 end
  if q > cap then return cap end
  return q
end

-- Formats a whole number without an exponent (tostring would write 1.7e+15).
local function int(x)
  return string.format('%.0f', x)
end

-- The decision fields in the order the Rust side reads them. retry is -1 for "none"; denial
-- is 0 (allowed), 1 (over limit) or 2 (cost exceeds limit).
local function allow(limit, remaining, reset)
  return {1, limit, remaining, reset, -1, 0}
end

local function over_limit(limit, remaining, reset, retry)
  return {0, limit, remaining, reset, retry, 1}
end

local function too_costly(limit, remaining, reset)
  return {0, limit, remaining, reset, -1, 2}
end

-- Algorithm functions by code. Each takes (p1, p2, p3, raw, now, cost) where raw is the
-- stored string or nil, and returns (decision, new state string, expires_at); the state
-- and expiry matter only when the decision allows.
local ALG = {}
