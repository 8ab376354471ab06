-- wrk script: POST /v1/check for many distinct tenants, users and IPs, so traffic is mostly
-- allowed and spread over many keys (each user comes back about every few seconds).
-- wrk runs LuaJIT (Lua 5.1): no integer division operator, hence math.floor.
local n = 0
request = function()
  n = n + 1
  local user = n % 200000
  local body = string.format(
    '{"tenant":"t%d","user":"u%d","ip":"10.%d.%d.%d","method":"GET","path":"/v1/items"}',
    user % 500, user, math.floor(user / 65536) % 256, math.floor(user / 256) % 256, user % 256)
  return wrk.format("POST", "/v1/check", { ["Content-Type"] = "application/json" }, body)
end
