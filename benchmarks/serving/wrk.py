"""wrk as the load generator: one thread, a fixed body, closed-loop or paced by a Lua scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from benchmarks.serving.config import CONNECTIONS, SERVER_CPU, pinned

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } mlr_timespec;
int clock_gettime(int clk_id, mlr_timespec *tp);
]]
local ts = ffi.new("mlr_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
wrk.method = "POST"
wrk.path = "__PATH__"
wrk.body = "__BODY__"
wrk.headers["Content-Type"] = "application/json"
local interval = __INTERVAL__
local next_slot = nil
function delay()
  if interval <= 0 then return 0 end
  local now = now_ms()
  if next_slot == nil or next_slot < now then next_slot = now end
  local wait = next_slot - now
  next_slot = next_slot + interval
  return wait
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, '
    .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def lua_escape(text: str) -> str:
    """``text`` inside a double-quoted Lua string (a JSON body's own escapes, such as \\u00e9, kept as sent)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def wrk(url: str, path: str, body: bytes, duration: float, rate: float | None) -> dict[str, float]:
    """One wrk run (1 thread, CONNECTIONS connections); paced to ``rate`` req/s when given."""
    script = (
        LUA.replace("__PATH__", path)
        .replace("__BODY__", lua_escape(body.decode()))
        .replace("__INTERVAL__", f"{1000.0 / rate:.6f}" if rate else "0")
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        proc = subprocess.run(
            pinned(
                SERVER_CPU + 1,
                [
                    "wrk",
                    "-t1",
                    f"-c{CONNECTIONS}",
                    f"-d{duration:g}s",
                    "--timeout",
                    "5s",
                    "-s",
                    handle.name,
                    url,
                ],
            ),
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
        )
    finally:
        os.unlink(handle.name)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {proc.stderr[-500:]}")
    raw = json.loads(line[len("WRKJSON ") :])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "errors": raw["errors"],
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
    }
