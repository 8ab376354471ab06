-- Entry point: evaluates every limit of one request against one time, and writes the new
-- states only if the request is admitted (all-or-nothing).
--
-- KEYS: one state key per limit (a string; a sorted set for the sliding log).
-- ARGV[1]: "1" to consume, "0" to only look.
-- ARGV[2]: "" to read the time from Redis TIME (always, in production); a microsecond
--          timestamp when a test store injects its own clock.
-- ARGV[3]: "1" to also return what a compensating refund needs (old value, its PTTL, new
--          value) for every written key; used when one request spans several cluster slots.
-- Then six arguments per limit: algorithm code, p1, p2, p3, cost, enforced ("1"/"0").
--
-- Reply: {admitted, now, then six integers per limit (see allow() above), then, with
-- ARGV[3] = "1" and an admitted consume, three strings per limit}.
local consume = ARGV[1] == '1'
local now
-- With an injected time, Redis still expires keys by its own clock, so the TTL gets an hour
-- of slack: keeping a state past its expiry is harmless (it evaluates like a fresh key).
local ttl_slack = 0
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
  ttl_slack = 3600000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local undo = ARGV[3] == '1'

local reply = {1, now}
local writes = {}
local admitted = true
for i = 1, #KEYS do
  local b = 3 + (i - 1) * 6
  local code = tonumber(ARGV[b + 1])
  -- The sliding log (code 5) keeps a sorted set and reads it itself; every other algorithm
  -- gets its string state, or nil (also for a key holding another type: a fresh key).
  local raw = KEYS[i]
  if code ~= 5 then
    raw = redis.pcall('GET', KEYS[i])
    if type(raw) ~= 'string' then raw = nil end
  end
  local cost = tonumber(ARGV[b + 5])
  local d, state, expires = ALG[code](
    tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
    raw, now, cost)
  if d[1] == 0 and ARGV[b + 6] == '1' then admitted = false end
  for j = 1, 6 do reply[#reply + 1] = d[j] end
  -- A zero-cost check writes nothing (as the in-memory store): under the same numbers its
  -- state restates what is stored, and under other numbers writing the conversion back would
  -- erase what the key used beyond the new numbers.
  writes[i] = {d[1] == 1 and cost > 0, state, expires, code == 5}
end
if not admitted then reply[1] = 0 end

if consume and admitted then
  local undos = {}
  for i = 1, #KEYS do
    local w = writes[i]
    local old, old_ttl, new = '', '0', ''
    if undo then
      if not w[4] then
        old = redis.pcall('GET', KEYS[i])
        if type(old) ~= 'string' then old = '' end
      end
      old_ttl = tostring(redis.call('PTTL', KEYS[i]))
    end
    if w[1] then
      -- Whole milliseconds, rounded up: the key never disappears before its state would be
      -- indistinguishable from a fresh one.
      local px = nil
      if w[3] > now then px = int(ceil_div(w[3] - now, 1000) + ttl_slack) end
      if w[4] then
        -- A key listed twice keeps the last evaluation, as a string state's last SET does.
        local later = false
        for j = i + 1, #KEYS do
          if KEYS[j] == KEYS[i] and writes[j][1] then later = true end
        end
        if not later then
          log_write(KEYS[i], w[2], px)
          old, new = log_undo(w[2])
        end
      elseif px then
        redis.call('SET', KEYS[i], w[2], 'PX', px)
        new = w[2]
      else
        redis.call('DEL', KEYS[i])
      end
    else
      new = old
    end
    undos[#undos + 1] = old
    undos[#undos + 1] = old_ttl
    undos[#undos + 1] = new
  end
  if undo then
    for _, v in ipairs(undos) do reply[#reply + 1] = v end
  end
end
return reply
