-- The check entry point: evaluates one or more requests, each over all of its limits against
-- one time, and writes a request's new states only if that request is admitted
-- (all-or-nothing per request). Requests in one call are decided one after another, each
-- seeing what the ones before it wrote, exactly as if they had been separate calls at the
-- same instant.
--
-- keys: every request's state keys, request after request (a string per limit; a sorted set
--       for the sliding log).
-- argv[1]: "" to read the time from Redis TIME (always, in production); a microsecond
--          timestamp when a test store injects its own clock.
-- argv[2]: the requests, packed as little-endian doubles (whole numbers): per request its
--          flags and its number of limits n, then six numbers per limit: algorithm code, p1,
--          p2, p3, cost, and the limit's flags: 1 = enforced (a denial blocks the request),
--          2 = a metered limit's admission (passes only with room for one unit, consumes
--          nothing; see admit below). Request flags: 1 = consume (else only look), 2 = also
--          return what a compensating refund needs (old value, its PTTL, new value) for
--          every key the request wrote; used when one request spans several cluster slots;
--          4 = charge after the fact: record every limit's cost whatever it says (CHG) and
--          write every state; 8 = the request's keys start with a report marker (not a
--          limit), set with NX for REPORT_TTL_MS: when it already exists the report is a
--          retry, nothing is charged and each limit is only looked at.
--
-- Reply: one string of little-endian doubles (whole numbers): the time (microseconds, below
-- 2^53, so exact), then per request admitted (1/0; for a charge, whether it was recorded),
-- then six per limit (allowed, limit, remaining, reset, retry, denial: see common.lua). When
-- a request with flag 2 is admitted as a consume over at least one limit (whether or not a
-- write changed a value), the reply is instead an array: that string, then, for every such
-- request in order, three strings per limit (old value, its PTTL, value written). One
-- string costs Redis far less to send than six integer replies per limit, and the client
-- far less to read than an array.
--
-- Expiry: a string state is stored with one more double after it, the deadline (script
-- microseconds) its key is known to live until. A write whose state needs the key to live
-- no longer than the stored deadline keeps the key's expiry (SET ... KEEPTTL, which costs
-- Redis much less than SET ... PX); otherwise the key gets a new deadline with slack, a
-- quarter of the time it must live or one second, whichever is more (so a key lives at most
-- that much longer than its state needs). A state without the deadline (written by an
-- earlier version) always gets SET ... PX. Every key holding a deadline lives at least until
-- it: SET ... PX sets it, KEEPTTL keeps it (XX: only on a key that still exists), and a
-- refund (refund.lua) restores a value with at least the expiry it had.

local CONSUME, UNDO, CHARGE, MARKED = 1, 2, 4, 8
-- A limit's flags.
local ENFORCED, ADMIT = 1, 2
-- How long a report marker lasts (spillway-core's REPORT_TTL), in milliseconds.
local REPORT_TTL_MS = 3600000

-- Writes `state` (a packed state ending in its deadline `d`) at `key`, whose state reads like
-- a fresh key from `need` (microseconds) on; `keep`: the deadline the key was read with
-- covers `d`. Returns the bytes written ('' for a delete). `ttl_slack` (milliseconds) is
-- added to every new expiry when the time is injected.
local function put(key, state, need, d, keep, now, ttl_slack)
  -- A state that is fresh by now is the same as no key.
  if need <= now then
    redis.call('DEL', key)
    return ''
  end
  -- Covered by the deadline read, the key keeps its expiry. pcall: a server without KEEPTTL
  -- (before Redis 6.0) answers with an error, and the write then sets the expiry as below.
  if keep then
    local r = redis.pcall('SET', key, state, 'XX', 'KEEPTTL')
    if type(r) == 'table' and r.ok then return state end
  end
  redis.call('SET', key, state, 'PX', int(px_until(d, now, ttl_slack)))
  return state
end

-- A metered limit's admission (LimitParams::admit): only with room for one unit, as a
-- request of cost 1 would pass, consuming nothing. Admitted, the decision is the zero-cost
-- look's; denied, the cost-1 denial's (retry: until one unit is free). Six values, no state.
local function admit(alg, p1, p2, p3, raw, now)
  -- One evaluation when there is room: a cost of 1 passes exactly when the zero-cost look
  -- leaves at least one unit (LimitParams::admit does the same).
  local a, l, r, reset, retry, denial = alg(p1, p2, p3, raw, now, 0)
  if a ~= 1 or r < 1 then
    a, l, r, reset, retry, denial = alg(p1, p2, p3, raw, now, 1)
  end
  return a, l, r, reset, retry, denial
end

local function check(keys, argv)
  if not pack then bind() end
  local now
  -- With an injected time, Redis still expires keys by its own clock, so the TTL gets an
  -- hour of slack: keeping a state past its expiry is harmless (it evaluates like a fresh
  -- key).
  local ttl_slack = 0
  if argv[1] ~= '' then
    now = tonumber(argv[1])
    ttl_slack = 3600000
  else
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local blob = argv[2]
  local size = #blob
  local pos = 1
  -- The reply: the time and the packed decisions (parts, joined at the end), then any undo
  -- records.
  local parts, np = {pack('<d', now)}, 1
  local undos = {''}
  -- Per limit of the request at hand: its key, whether it writes, its new state, when that
  -- expires, the deadline packed in it, whether the key keeps its expiry (the deadline read
  -- covers the new one) and whether it is a sliding log.
  local wkey, ok, states, expires, dls, keep, logs = {}, {}, {}, {}, {}, {}, {}
  local k = 0
  while pos <= size do
    local flags, n
    flags, n, pos = unpack('<dd', blob, pos)
    local charge = flags % 8 >= CHARGE
    -- For a charge: whether it is recorded (not a retry of a report already recorded).
    local fresh = true
    if flags % 16 >= MARKED then
      k = k + 1
      fresh = redis.call('SET', keys[k], '1', 'NX', 'PX', REPORT_TTL_MS) ~= false
    end
    np = np + 1
    local admit_at = np
    local admitted = true
    for j = 1, n do
      local i = k + j
      local code, p1, p2, p3, cost, lflags
      code, p1, p2, p3, cost, lflags, pos = unpack('<dddddd', blob, pos)
      local key = keys[i]
      -- The sliding log (code 5) keeps a sorted set and reads it itself; every other
      -- algorithm gets its string state, or nil (also for a key holding another type: a
      -- fresh key), and hands back the deadline it was stored with (`held`).
      local raw = key
      if code ~= 5 then
        raw = redis.pcall('GET', key)
        if type(raw) ~= 'string' then raw = nil end
      end
      local allowed, limit, remaining, reset, retry, denial, state, expiry, d, held
      local charged = cost
      local alg = ALG[code]
      if charge and fresh and CHG[code] then
        -- Recorded whatever the limit says; the standing told is what an admission sees on
        -- the new state (LimitParams::charge).
        state, expiry, d, held = CHG[code](p1, p2, p3, raw, now, cost)
        allowed, limit, remaining, reset, retry, denial = admit(alg, p1, p2, p3, state, now)
      elseif (charge and not fresh) or lflags >= ADMIT then
        -- A retried report tells the standing and charges nothing; a metered limit's
        -- admission consumes nothing.
        charged = 0
        allowed, limit, remaining, reset, retry, denial = admit(alg, p1, p2, p3, raw, now)
      else
        allowed, limit, remaining, reset, retry, denial, state, expiry, d, held =
          alg(p1, p2, p3, raw, now, cost)
      end
      if allowed == 0 and lflags % 2 == ENFORCED then admitted = false end
      np = np + 1
      parts[np] = pack('<dddddd', allowed, limit, remaining, reset, retry, denial)
      -- A zero-cost check writes nothing (as the in-memory store): under the same numbers
      -- its state restates what is stored, and under other numbers writing the conversion
      -- back would erase what the key used beyond the new numbers. A charge writes every
      -- state it recorded (the sliding log only what fits).
      wkey[j], ok[j], states[j], expires[j], dls[j], keep[j], logs[j] =
        key, (allowed == 1 and charged > 0) or (charge and fresh and CHG[code] ~= nil),
        state, expiry, d, held ~= nil and d <= held, code == 5
    end
    if charge then admitted = fresh end
    if admitted then parts[admit_at] = ONE else parts[admit_at] = ZERO end
    local undo = not charge and flags % 4 >= UNDO
    if admitted and (charge or flags % 2 == CONSUME) then
      for j = 1, n do
        local key = wkey[j]
        local old, old_ttl, new = '', '0', ''
        if undo then
          -- What a compensating refund needs: the key as it is in Redis now.
          if not logs[j] then
            old = redis.pcall('GET', key)
            if type(old) ~= 'string' then old = '' end
          end
          old_ttl = int(redis.call('PTTL', key))
        end
        if not ok[j] then
          new = old
        elseif logs[j] then
          -- The sliding log's plan (px: whole milliseconds, rounded up). A key listed twice
          -- keeps the last evaluation, as a string state's last write does.
          local later = false
          for jj = j + 1, n do
            if wkey[jj] == key and ok[jj] then later = true end
          end
          if not later then
            local px = nil
            if expires[j] > now then px = px_until(expires[j], now, ttl_slack) end
            log_write(key, states[j], px)
            old, new = log_undo(states[j])
          end
        else
          new = put(key, states[j], expires[j], dls[j], keep[j], now, ttl_slack)
        end
        if undo then
          undos[#undos + 1] = old
          undos[#undos + 1] = old_ttl
          undos[#undos + 1] = new
        end
      end
    end
    k = k + n
  end
  if #undos == 1 then return concat(parts) end
  undos[1] = concat(parts)
  return undos
end
