-- wrk script: POST a binary Open Inference Protocol v2 request (the binary tensor extension).
--   BENCH_BODY=/path/to/body.bin BENCH_HEADER_LENGTH=123 wrk -t2 -c16 -d10s --latency -s bench/wrk/v2.lua \
--     http://127.0.0.1:3000/v2/models/demo-dna/infer
-- BENCH_BODY: the JSON header followed by the inputs' bytes (bench/v2.py writes it);
-- BENCH_HEADER_LENGTH: the JSON header's length in bytes (the Inference-Header-Content-Length header).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

wrk.method = "POST"
wrk.body = common.read_file(assert(os.getenv("BENCH_BODY"), "set BENCH_BODY to the request body file"))
wrk.headers["Inference-Header-Content-Length"] = assert(os.getenv("BENCH_HEADER_LENGTH"), "set BENCH_HEADER_LENGTH")
wrk.headers["Content-Type"] = "application/octet-stream"
common.install()
