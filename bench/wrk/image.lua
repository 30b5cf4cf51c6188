-- wrk script: POST one image file as multipart/form-data, field "file" (what /predict_image takes).
--   BENCH_FILE=/path/to/image.dcm wrk -t2 -c16 -d10s --latency -s bench/wrk/image.lua http://127.0.0.1:3000/predict_image
-- BENCH_FILE: the upload (DICOM, PNG or JPEG); BENCH_FIELD: form field name (default "file");
-- BENCH_MODEL: optional "model" form field. The body is built once per thread, at load.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local path = assert(os.getenv("BENCH_FILE"), "set BENCH_FILE to the file to upload")
local field = os.getenv("BENCH_FIELD") or "file"
local model = os.getenv("BENCH_MODEL")
local boundary = "----biomed-bench-7d1f0c2a9e"
local name = path:match("([^/]+)$")

local parts = {}
if model and model ~= "" then
  table.insert(parts, "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="model"\r\n\r\n' .. model .. "\r\n")
end
table.insert(parts, "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="' .. field .. '"; filename="' .. name .. '"\r\n'
  .. "Content-Type: application/octet-stream\r\n\r\n"
  .. common.read_file(path) .. "\r\n")
table.insert(parts, "--" .. boundary .. "--\r\n")

wrk.method = "POST"
wrk.body = table.concat(parts)
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
common.install()
