-- Shared by the wrk scripts: a fresh Luhn-valid 16-digit Visa-range PAN for each call.
-- The 15-digit body is "4", a per-thread counter's eight digits reversed and six digits
-- of (run offset + thread number), so no two requests of one run (and, with distinct
-- offsets, of two runs) send the same card: every tokenize creates a token.
-- Reversed, the counter's fastest digits make the BIN, so consecutive cards fall in
-- different BINs as a merchant's traffic does, and each BIN + last four (the oracle
-- guard's bucket) gets about one card a run. With the counter in the middle digits, as
-- before, a thread sent all its cards in one BIN over ~1,000 last fours: a guessing
-- attack's shape, which the guard at its default refuses after 10 cards a bucket, and
-- which made the guard read back every card already in a bucket (thousands a batch).

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
    local body = "4" .. string.format("%08d", counter % 100000000):reverse() .. group
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
