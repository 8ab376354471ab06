-- wrk script: POST /v1/check for many distinct tenants, users and IPs, so traffic is mostly
-- allowed and spread over many keys (each user comes back about every few seconds).
-- wrk runs LuaJIT (Lua 5.1): no integer division operator, hence math.floor.
--
-- Optional script arguments name another method and path for the same bodies, so a run can
-- measure a server's floor with the client doing the same work: `-- GET /healthz`.
local n = 0
local method, path = "POST", "/v1/check"

init = function(args)
  if args[1] then method = args[1] end
  if args[2] then path = args[2] end
end

request = function()
  n = n + 1
  local user = n % 200000
  local body = string.format(
    '{"tenant":"t%d","user":"u%d","ip":"10.%d.%d.%d","method":"GET","path":"/v1/items"}',
    user % 500, user, math.floor(user / 65536) % 256, math.floor(user / 256) % 256, user % 256)
  return wrk.format(method, path, { ["Content-Type"] = "application/json" }, body)
end
