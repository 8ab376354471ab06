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
-- Reply: {now, then per request: admitted (1/0; for a charge, whether it was recorded), six integers per limit (allowed, limit,
-- remaining, reset, retry, denial: see common.lua), then, for an admitted consume with flag 2,
-- three strings per limit}.

local CONSUME, UNDO, CHARGE, MARKED = 1, 2, 4, 8
-- A limit's flags.
local ENFORCED, ADMIT = 1, 2
-- How long a report marker lasts (spillway-core's REPORT_TTL), in milliseconds.
local REPORT_TTL_MS = 3600000

-- Writes what request limits first .. first + n - 1 decided (see check below), appending
-- undo records to reply when asked.
local function write_request(keys, first, n, ok, states, expires, logs, now, ttl_slack,
                             undo, reply)
  for i = first, first + n - 1 do
    local key = keys[i]
    local old, old_ttl, new = '', '0', ''
    if undo then
      if not logs[i] then
        old = redis.pcall('GET', key)
        if type(old) ~= 'string' then old = '' end
      end
      old_ttl = int(redis.call('PTTL', key))
    end
    if ok[i] then
      -- Whole milliseconds, rounded up: the key never disappears before its state would be
      -- indistinguishable from a fresh one.
      local px = nil
      if expires[i] > now then px = ceil_div(expires[i] - now, 1000) + ttl_slack end
      if logs[i] then
        -- A key listed twice keeps the last evaluation, as a string state's last SET does.
        local later = false
        for j = i + 1, first + n - 1 do
          if keys[j] == key and ok[j] then later = true end
        end
        if not later then
          log_write(key, states[i], px)
          old, new = log_undo(states[i])
        end
      elseif px then
        redis.call('SET', key, states[i], 'PX', int(px))
        new = states[i]
      else
        redis.call('DEL', key)
      end
    else
      new = old
    end
    if undo then
      reply[#reply + 1] = old
      reply[#reply + 1] = old_ttl
      reply[#reply + 1] = new
    end
  end
end

-- A metered limit's admission (LimitParams::admit): only with room for one unit, as a
-- request of cost 1 would pass, consuming nothing. Admitted, the decision is the zero-cost
-- look's; denied, the cost-1 denial's (retry: until one unit is free). Six values, no state.
local function admit(alg, p1, p2, p3, raw, now)
  local a, l, r, reset, retry, denial = alg(p1, p2, p3, raw, now, 1)
  if a == 1 then
    a, l, r, reset, retry, denial = alg(p1, p2, p3, raw, now, 0)
  end
  return a, l, r, reset, retry, denial
end

local function check(keys, argv)
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
  local pos = 1
  local reply = {now}
  -- Per limit (indexed like keys): whether it writes, its new state, when that expires, and
  -- whether it is a sliding log.
  local ok, states, expires, logs = {}, {}, {}, {}
  local k = 0
  while pos <= #blob do
    local flags, n
    flags, n, pos = struct.unpack('<dd', blob, pos)
    local charge = flags % 8 >= CHARGE
    -- For a charge: whether it is recorded (not a retry of a report already recorded).
    local fresh = true
    if flags % 16 >= MARKED then
      k = k + 1
      fresh = redis.call('SET', keys[k], '1', 'NX', 'PX', REPORT_TTL_MS) ~= false
    end
    local admit_at = #reply + 1
    reply[admit_at] = 1
    local admitted = true
    for i = k + 1, k + n do
      local code, p1, p2, p3, cost, lflags
      code, p1, p2, p3, cost, lflags, pos = struct.unpack('<dddddd', blob, pos)
      -- The sliding log (code 5) keeps a sorted set and reads it itself; every other
      -- algorithm gets its string state, or nil (also for a key holding another type: a
      -- fresh key).
      local raw = keys[i]
      if code ~= 5 then
        raw = redis.pcall('GET', raw)
        if type(raw) ~= 'string' then raw = nil end
      end
      local allowed, limit, remaining, reset, retry, denial, state, expiry
      local charged = cost
      if charge and fresh and CHG[code] then
        -- Recorded whatever the limit says; the standing told is what an admission sees on
        -- the new state (LimitParams::charge).
        allowed, limit, remaining, reset, retry, denial, state, expiry =
          CHG[code](p1, p2, p3, raw, now, cost)
        allowed, limit, remaining, reset, retry, denial =
          admit(ALG[code], p1, p2, p3, state, now)
      elseif (charge and not fresh) or lflags >= ADMIT then
        -- A retried report tells the standing and charges nothing; a metered limit's
        -- admission consumes nothing.
        charged = 0
        allowed, limit, remaining, reset, retry, denial = admit(ALG[code], p1, p2, p3, raw, now)
      else
        allowed, limit, remaining, reset, retry, denial, state, expiry =
          ALG[code](p1, p2, p3, raw, now, cost)
      end
      if allowed == 0 and lflags % 2 == ENFORCED then admitted = false end
      local r = #reply
      reply[r + 1], reply[r + 2], reply[r + 3] = allowed, limit, remaining
      reply[r + 4], reply[r + 5], reply[r + 6] = reset, retry, denial
      -- A zero-cost check writes nothing (as the in-memory store): under the same numbers
      -- its state restates what is stored, and under other numbers writing the conversion
      -- back would erase what the key used beyond the new numbers.
      local writes = allowed == 1 and charged > 0
      -- A charge writes every state it recorded (the sliding log only what fits).
      if charge and fresh and CHG[code] then writes = true end
      ok[i], states[i], expires[i], logs[i] = writes, state, expiry, code == 5
    end
    if charge then
      admitted = fresh
      if fresh then reply[admit_at] = 1 else reply[admit_at] = 0 end
    end
    if not admitted then reply[admit_at] = 0 end
    if charge then
      if fresh then
        write_request(keys, k + 1, n, ok, states, expires, logs, now, ttl_slack, false, reply)
      end
    elseif admitted and flags % 2 == CONSUME then
      write_request(keys, k + 1, n, ok, states, expires, logs, now, ttl_slack,
        flags % 4 >= UNDO, reply)
    end
    k = k + n
  end
  return reply
end
