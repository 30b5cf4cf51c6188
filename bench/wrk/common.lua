-- Shared by image.lua and dna.lua: count responses by status in every wrk thread and print
-- one machine-readable line at the end, "bench-status 200=1234 503=2", which biomed bench
-- parses beside wrk's own report (wrk itself only counts status > 399 as errors).
local M = {}
local threads = {}

function M.read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

function M.install()
  setup = function(thread)
    table.insert(threads, thread)
  end
  init = function(args)
    statuses = {}
  end
  response = function(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
  done = function(summary, latency, requests)
    local total = {}
    for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses") or {}) do
        total[status] = (total[status] or 0) + n
      end
    end
    local parts = {}
    for status, n in pairs(total) do
      table.insert(parts, status .. "=" .. n)
    end
    table.sort(parts)
    io.write("bench-status " .. table.concat(parts, " ") .. "\n")
  end
end

return M
