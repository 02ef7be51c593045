-- tools/bench/mix.lua — wrk script of tools/bench/proxy and tools/bench/lookup-load.
-- args: path pool miss_pct nonce. Pool URLs are path?k=1..pool; a miss is
-- path?m=NONCE-i, never requested before. Prints one RESULT line.
local pool, miss, nonce, k, path = {}, 0, "", 0, "/"
function init(args)
    path = args[1]
    local n = tonumber(args[2])
    miss = tonumber(args[3])
    nonce = args[4]
    for i = 1, n do pool[i] = wrk.format("GET", path .. "?k=" .. i) end
    math.randomseed(tonumber(nonce))
end
function request()
    if miss > 0 and math.random(100) <= miss then
        k = k + 1
        return wrk.format("GET", path .. "?m=" .. nonce .. "-" .. k)
    end
    return pool[math.random(#pool)]
end
function done(s, lat, req)
    local e = s.errors
    io.write(string.format("RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d " ..
        "errors=%d\n", s.requests, s.duration, s.bytes, lat:percentile(50), lat:percentile(99),
        e.connect + e.read + e.write + e.status + e.timeout))
end
