-- Shared helpers for the algorithm functions below.
--
-- This file opens the check library (see script.rs): everything here and in the algorithm
-- files is defined once, when Redis loads the library (FUNCTION LOAD), and reused by every
-- call. Redis 7.0 offers only the `redis` table while a library loads, so nothing at the top
-- level may touch math, string or struct; the functions below look those up when they run.
-- Nothing defines a function or builds a closure per call.
--
-- The library functions the hot path uses are kept as upvalues, bound by the first call
-- (`bind`, from check.lua): an upvalue costs one instruction where `math.floor` costs two
-- table lookups. Floors of quotients are taken as `q - q % 1` (exact for every double: the
-- fractional part x % 1 = x - floor(x) is exact, and so is the subtraction) rather than by
-- calling math.floor, and min/max of two numbers as a comparison: a C function call costs
-- more than the arithmetic it does.
local pack, unpack, format, concat
-- 1 and 0 packed as a reply's doubles (a request admitted or not), made once.
local ONE, ZERO
local function bind()
  pack, unpack = struct.pack, struct.unpack
  format, concat = string.format, table.concat
  ONE, ZERO = pack('<d', 1), pack('<d', 0)
end

-- Redis runs Lua 5.1, whose numbers are doubles: a whole number is exact only below 2^53.
-- Every helper here takes and returns whole numbers within that range and never forms a
-- larger intermediate, so the results are the same integers the Rust functions in
-- spillway-core compute.

-- Quotient and remainder of a / b for whole 0 <= a <= 2^53 and b > 0. A correctly rounded
-- a / b never crosses an integer boundary while a <= 2^53, so floor() gives the true quotient.
local function divmod(a, b)
  local q = a / b
  q = q - q % 1
  return q, a - q * b
end

-- a / b rounded up (Rust's div_ceil).
local function ceil_div(a, b)
  local q = a / b
  q = q - q % 1
  if a - q * b > 0 then q = q + 1 end
  return q
end

-- The PX (milliseconds) of a key that must live until `deadline` (microseconds) from `now`,
-- plus `slack` milliseconds: rounded up, plus one, because Redis counts PX from its command
-- time truncated to the millisecond, up to a millisecond before `now` (without it a key could
-- vanish up to a millisecond before its deadline; tests/expiry.rs saw it).
local function px_until(deadline, now, slack)
  return ceil_div(deadline - now, 1000) + 1 + slack
end

-- floor(a / b) for whole a >= 0, b > 0.
local function div(a, b)
  local q = a / b
  return q - q % 1
end

local function min(a, b)
  if a < b then return a end
  return b
end

local function max(a, b)
  if a > b then return a end
  return b
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
-- a state written under other numbers of the same limit. x <= 2^53 (a saturated debt or
-- level is exactly 2^53, so the bits go up to 2^53: with 2^52 as the top bit, 2^53 would be
-- read as 2^53 - 1 and the result rounded one unit low); cap <= 2^53.
local function rescale(x, from, to, cap, up)
  if div(x, from) >= cap / to then return cap end
  -- Here x < (cap / to) * from, so the result stays below cap + to.
  local q, r = muldiv_bits(x, to, from, 53)
  if up and r > 0 then q = q + 1 end
  if q > cap then return cap end
  return q
end

-- Formats a whole number without an exponent (tostring would write 1.7e+15). %d is exact
-- for every whole double below 2^63.
local function int(x)
  return format('%d', x)
end

-- States are stored compactly: one tag byte naming the algorithm, then the state's whole
-- numbers as little-endian doubles (exact below 2^53), packed and unpacked by Redis's struct
-- library in one call each. Earlier versions wrote text ("T:<n>:<n>..."); every algorithm
-- still reads that form, so keys written before an upgrade keep their state. A value of any
-- other shape (another algorithm's state, a foreign value) reads as a fresh key.
--
-- The decision an algorithm returns is ten values: allowed (1/0), limit, remaining, reset
-- (microseconds), retry (-1 for "none"), denial (0 allowed, 1 over limit, 2 cost exceeds
-- limit), then the new state, the time it reads like a fresh key from (`need`), the deadline
-- packed at its end (deadline(need, held, now), see `deadline`) and the deadline the state it
-- read was stored with (`held`, nil for none); the last four are used only when allowed. Each
-- algorithm's read unpacks that stored deadline with the state, in the same call. (The
-- sliding log returns its plan and need only; see sliding_log.lua.)

-- Algorithm functions by code. Each takes (p1, p2, p3, raw, now, cost) where raw is the
-- stored string or nil, and returns the ten values above.
local ALG = {}

-- Charges after the fact by code (all but the sliding log), mirroring each algorithm's
-- `charge` in spillway-core: the same arguments as ALG, the cost recorded whatever the limit
-- says (a debt past it, capped). Returns the new state, which is always written, when it
-- reads like a fresh key, its deadline and the deadline the state read was stored with (the
-- last four values of ALG); the standing a charge answers is the admission's on that state
-- (`admit` in check.lua), so no decision is computed here.
local CHG = {}

-- 2^53, the largest amount any state holds, and ten years in microseconds (MAX_WINDOW): the
-- longest a debt may take to repay.
local MAX_SCALED = 9007199254740992
local MAX_WINDOW = 315360000000000

-- The most a bucket key may have used after a charge after the fact (algorithm::max_used):
-- the capacity, or ten years of refill when that is more, at most 2^53. A product past 2^53
-- rounds to at least 2^53, so the minimum is exact.
local function max_used(rt, capacity)
  return min(MAX_SCALED, max(capacity, MAX_WINDOW * rt))
end

-- The least slack a new deadline gets, in microseconds: one second.
local MIN_SLACK = 1000000

-- Every string state is stored with one more number after it: the deadline (microseconds)
-- its key lives until (see check.lua). For a state written at `now` that reads like a fresh
-- key from `need` on, on a key known to live until `held` (nil: unknown): `held` when that
-- covers `need` (the write keeps the key's expiry), else `need` plus a quarter of the time
-- until then or one second, whichever is more (the write sets a new expiry, with slack so
-- that later writes can keep it).
local function deadline(need, held, now)
  if held and need <= held then return held end
  local slack = (need - now) / 4
  if slack < MIN_SLACK then slack = MIN_SLACK end
  return need + slack - slack % 1
end
