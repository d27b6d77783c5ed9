-- wrk script for tests/benchmark/bench_latency.py: POST one JSON body per request, taken in
-- turn from a file (one body a line), and, when asked, a fresh Idempotency-Key on each, so
-- that every durable write is a new one. Prints its figures as one JSON line at the end.
--
--   wrk -t1 -cN -dS -s latency.lua URL -- PATH AUTHORIZATION BODIES_FILE KEY_PREFIX|-

local path, authorization, prefix
local bodies = {}
local sent = 0

function init(args)
  path, authorization, prefix = args[1], args[2], args[4]
  for line in io.lines(args[3]) do
    bodies[#bodies + 1] = line
  end
end

function request()
  sent = sent + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = authorization,
  }
  if prefix ~= "-" then
    headers["Idempotency-Key"] = prefix .. "-" .. sent
  end
  return wrk.format("POST", path, headers, bodies[sent % #bodies + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
