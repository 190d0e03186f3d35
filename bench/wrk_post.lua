-- wrk script used by bench/run.py: POST the Mem0 ADD body and count what happened.
--
-- The body comes from the environment (BENCH_WRK_BODY) so bench/run.py stays the single
-- source of truth. If BENCH_WRK_DELIVERY_PREFIX is set, every request also carries a distinct
-- `webhook-id: <prefix><thread>-<n>` header and is about a distinct memory (the documented
-- id in the body is replaced by the same string), as the events of a Mem0 ingest job are:
-- a receiver that deduplicates deliveries sees each request as a new event, and one that
-- orders events per memory is not measured on a single memory's serialized stream.
-- Per wrk thread we count:
--   issued    requests handed to the socket (calls of request())
--   responses responses fully read
--   statuses  responses per HTTP status code
-- issued - responses = requests in flight when wrk stopped at its deadline: the server
-- received them (and may have enqueued them) but wrk never read their answer.
-- done() prints one machine-readable line starting with "BENCH_RESULT ".

wrk.method = "POST"
wrk.body = os.getenv("BENCH_WRK_BODY") or error("BENCH_WRK_BODY is not set")
wrk.headers["Content-Type"] = "application/json"
local delivery_prefix = os.getenv("BENCH_WRK_DELIVERY_PREFIX")

local threads = {}
local next_id = 0

-- Runs in the main Lua state, once per thread, before that thread's init().
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
  table.insert(threads, thread)
end

-- Runs in each thread's own Lua state.
function init(args)
  statuses = {}
  responses = 0
  -- wrk calls request() once on the first thread's state to validate the request before
  -- any traffic is sent; start that thread at -1 so that call is not counted.
  issued = (thread_id == 1) and -1 or 0
  req = wrk.format()
end

local documented_id = "a1b2c3d4%-e5f6%-4g7h%-8i9j%-k0l1m2n3o4p5"

function request()
  issued = issued + 1
  if delivery_prefix then
    local id = delivery_prefix .. thread_id .. "-" .. issued
    wrk.headers["webhook-id"] = id
    return wrk.format(nil, nil, nil, (string.gsub(wrk.body, documented_id, id)))
  end
  return req
end

function response(status, headers, body)
  responses = responses + 1
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local issued_total, responses_total, merged = 0, 0, {}
  for _, thread in ipairs(threads) do
    issued_total = issued_total + thread:get("issued")
    responses_total = responses_total + thread:get("responses")
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us": %d, "requests": %d, "issued": %d, "responses": %d, '
      .. '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d}, "p50_us": %f, "p99_us": %f, "max_us": %f}\n',
    summary.duration, summary.requests, issued_total, responses_total,
    table.concat(parts, ", "), e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
