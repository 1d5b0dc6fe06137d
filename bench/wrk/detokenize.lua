-- wrk script: POST /v1/detokenize, cycling through tokens created before the run.
-- Arguments (after --): the file with one token per line.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local pan = require("pan")

local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

local tokens, position = {}, 0
function init(args)
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = line
  end
  position = (thread_id or 0) * 997
end

local headers = { ["Content-Type"] = "application/json" }
function request()
  position = position % #tokens + 1
  return wrk.format("POST", "/v1/detokenize", headers,
    '{"token":"' .. tokens[position] .. '"}')
end

function done(summary, latency, requests)
  pan.report(summary, latency)
end
