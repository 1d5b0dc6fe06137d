-- wrk script: POST /v1/tokenize with a fresh Luhn-valid PAN per request.
-- Arguments (after --): the run offset (distinct per run, so cards never repeat).
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
function request()
  return wrk.format("POST", "/v1/tokenize", headers,
    '{"pan":"' .. next_pan() .. '","format":"pan_bin6_last4"}')
end

function done(summary, latency, requests)
  pan.report(summary, latency)
end
