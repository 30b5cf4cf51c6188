-- wrk script: POST a JSON body (what /predict_dna, /score_variants and /explain_dna take).
--   BENCH_BODY=/path/to/body.json wrk -t2 -c16 -d10s --latency -s bench/wrk/dna.lua http://127.0.0.1:3000/predict_dna
-- BENCH_BODY: a file holding the JSON body. Without it, BENCH_DNA_LENGTH (default 200) random
-- bases (fixed seed) are sent as {"sequences": ["..."]}.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local function random_body(length)
  math.randomseed(7)
  local bases, seq = { "A", "C", "G", "T" }, {}
  for i = 1, length do
    seq[i] = bases[math.random(4)]
  end
  return '{"sequences": ["' .. table.concat(seq) .. '"]}'
end

local body_file = os.getenv("BENCH_BODY")
wrk.method = "POST"
if body_file and body_file ~= "" then
  wrk.body = common.read_file(body_file)
else
  wrk.body = random_body(tonumber(os.getenv("BENCH_DNA_LENGTH") or "200"))
end
wrk.headers["Content-Type"] = "application/json"
common.install()
