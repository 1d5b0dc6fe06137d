-- wrk script: POST /v1/tokenize/batch with 1,000 fresh Luhn-valid PANs per request.
-- Arguments (after --): the run offset.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua"
local pan = require("pan")

local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

local next_pan
function init(args)
  next_pan = pan.maker(tonumber(args[1] or "0"), thread_id or 0)
end

local headers = { ["Content-Type"] = "application/json" }
local items = {}
function request()
  for i = 1, 1000 do
    items[i] = '{"pan":"' .. next_pan() .. '","format":"pan_bin6_last4"}'
  end
  return wrk.format("POST", "/v1/tokenize/batch", headers,
    '{"items":[' .. table.concat(items, ",") .. ']}')
end

function done(summary, latency, requests)
  pan.report(summary, latency)
end
