-- wrk script: batch publishes (POST /api/v1/messages/batch), BATCH_SIZE messages per request.
--
--   BATCH_SIZE=100 wrk -t2 -c16 -d10s -s loadtests/ingest/publish_batch.lua http://127.0.0.1:8080
--
-- Each wrk thread publishes to its own topic. Prints messages per second (requests x size).

local prefix = os.getenv("TOPIC_PREFIX") or "bench-batch"
local size = tonumber(os.getenv("BATCH_SIZE") or "100")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  local item = '{"topic":"' .. prefix .. "-" .. id .. '","payload":{"msg":"' ..
    string.rep("x", 64) .. '","n":1}}'
  local items = {}
  for i = 1, size do
    items[i] = item
  end
  wrk.method = "POST"
  wrk.path = "/api/v1/messages/batch"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"messages":[' .. table.concat(items, ",") .. ']}'
  not_created = 0
end

function response(status, headers, body)
  if status ~= 201 then
    not_created = not_created + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("not_created")
  end
  local rps = summary.requests / (summary.duration / 1e6)
  io.write(string.format("requests/s: %.0f, msgs/s: %.0f (batch %d)\n", rps, rps * size, size))
  io.write(string.format("latency p50 %.2f ms, p99 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  io.write(string.format("answers other than 201: %d\n", bad))
end
