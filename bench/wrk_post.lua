-- wrk posting one JSON body to /v1/generate, the body given after `--` (bench/serving_best.py runs it):
--   wrk -t1 -c8 -d5s --timeout 60s -s bench/wrk_post.lua http://127.0.0.1:8000/v1/generate -- '{"n":1000}'
-- At the end one line, "wrk-json {...}", of what wrk counted. No response() callback: handing every body to
-- Lua would slow wrk down; the names are counted as n per non-error answer by the caller.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  wrk.body = args[1]  -- set before wrk.init formats the request it then sends unchanged
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"requests":%d,"duration_us":%d,"non_2xx_3xx":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
