-- Shared by the wrk scripts: a fresh Luhn-valid 16-digit Visa-range PAN for each call.
-- The 15-digit body is "4", six digits of (run offset + thread number) and an
-- eight-digit per-thread counter, so no two requests of one run (and, with distinct
-- offsets, of two runs) send the same card: every tokenize creates a token.

local function luhn_digit(body)
  local sum, double = 0, true
  for i = #body, 1, -1 do
    local d = body:byte(i) - 48
    if double then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    double = not double
  end
  return tostring((10 - sum % 10) % 10)
end

local M = {}

function M.maker(offset, thread_id)
  local counter = 0
  local group = string.format("%06d", (offset + thread_id) % 1000000)
  return function()
    counter = counter + 1
    local body = "4" .. group .. string.format("%08d", counter % 100000000)
    return body .. luhn_digit(body)
  end
end

-- wrk's done(): one JSON line with what the bench reads (latencies in microseconds).
function M.report(summary, latency)
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end

return M
