-- wrk script: POST one small chat completion, count non-200 answers, and print
-- the run's figures as one JSON line (prefixed "BENCH_JSON ") for bench/run.py.
--   wrk -c 10 -t 2 -d 8s -s bench/chat.lua http://127.0.0.1:8080 -- mw-KEY

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"

-- Each wrk thread has its own Lua state; setup() runs in the main state and
-- keeps a handle on every thread so done() can add up their counters.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

-- Runs in each thread before wrk.format() builds the request, so the header is
-- part of the pre-built request and costs nothing per request.
function init(args)
   non200 = 0
   first_bad_status = 0
   first_bad_body = ""
   if args[1] then
      wrk.headers["Authorization"] = "Bearer " .. args[1]
   end
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
      if first_bad_status == 0 then
         first_bad_status = status
         first_bad_body = string.sub(body or "", 1, 300)
      end
   end
end

-- Enough JSON string escaping for an error body: quotes, backslashes, controls.
local function json_string(text)
   return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
   local bad, first, first_body = 0, 0, ""
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("non200")
      if first == 0 then
         first = thread:get("first_bad_status")
         first_body = thread:get("first_bad_body")
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"non200":%d,"first_bad_status":%d,"first_bad_body":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\n',
      summary.requests, summary.duration, bad, first, json_string(first_body),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
