-- wrk script: single-message publishes to ingest (POST /api/v1/messages).
--
--   wrk -t2 -c64 -d10s -s loadtests/ingest/publish.lua http://127.0.0.1:8080
--
-- Each wrk thread publishes to its own topic (bench-<thread>), so per-topic streams grow
-- like a few busy producers would make them. TOPIC_PREFIX changes the prefix; PAYLOAD_BYTES
-- sets the size of the string inside the payload (default 64).
-- At the end it prints how many answers were not 201: any of them means the run is invalid.

local prefix = os.getenv("TOPIC_PREFIX") or "bench"
local payload_bytes = tonumber(os.getenv("PAYLOAD_BYTES") or "64")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  local topic = prefix .. "-" .. id
  local filler = string.rep("x", payload_bytes)
  wrk.method = "POST"
  wrk.path = "/api/v1/messages"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"topic":"' .. topic .. '","payload":{"msg":"' .. filler .. '","n":1}}'
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
  io.write(string.format("msgs/s: %.0f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
  io.write(string.format("answers other than 201: %d\n", bad))
end
