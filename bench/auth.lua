-- wrk script for bench/auth.sh: GET /v1/authorize as nginx's subrequest would send it, for a
-- population of 1,000 callers (500 tenants, 1,000 users).
--   -- token FILE   each request carries `Authorization: Bearer <token>`, one of FILE's lines
--   -- plain        each request names its tenant and user in X-Tenant-Id / X-User-Id
local tokens, mode, n = {}, "plain", 0

init = function(args)
  mode = args[1] or "plain"
  if mode == "token" then
    for line in io.lines(args[2]) do tokens[#tokens + 1] = line end
  end
end

request = function()
  n = n + 1
  local i = n % 1000
  local headers = { ["X-Original-Method"] = "GET", ["X-Original-URI"] = "/v1/items" }
  if mode == "token" then
    headers["Authorization"] = "Bearer " .. tokens[i + 1]
  else
    headers["X-Tenant-Id"] = "t" .. (i % 500)
    headers["X-User-Id"] = "u" .. i
  end
  return wrk.format("GET", "/v1/authorize", headers)
end
