"""Serving benchmark: this server vs ``mlflow models serve`` vs bare ceilings (same model, body, wrk).

Each server runs pinned to CPU 0, with wrk pinned to CPU 1. For each: req/s at saturation (closed loop; the
median of interleaved rounds), then p50/p99 at 50% and 80% of its own peak (wrk paced by a Lua scheduler, also
in interleaved rounds, the round of median p99 kept with every round's p99; a point whose achieved rate falls
more than 3% short of its target is marked saturated), CPU seconds per request
(at the peak and at each paced point) and resident memory of the server's process tree. Two ceilings answer the
same request without a model: the bare ASGI app the serving issue names, and the same app behind the protocol fast
path our server uses for predictions (the like-for-like ceiling); a third, a bare asyncio protocol with no
framework, shows what the core allows a server whose requests cost little (a missed p99 verdict names the
model-less servers that met it in the same run). Our server runs twice: as configured by default (TorchScript) and
with the opt-in numpy runner of its graph (MLRELEASE_RUNTIME=auto, deploy/serving/lowering.py). Last, the bare
protocol is made to cost per request what one cost our server at the peak (servers of our cost without our
structure: fixed work of that cost, half of it, and a busy loop on the CPU clock; see ``cost_matched``),
interleaved with our server measured again, so all share a stretch of the machine's noise; their CPU per request
is compared at the peak and at 80%. The servers' core is probed for steadiness (deploy/serving/steadiness.py) just
before and after the first latency points, as a measure of the machine's noise.
Writes reports/bench_serving.json and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deploy.serving.steadiness import describe
from mlrelease.core.net import free_port, stop_process

log = logging.getLogger("deploy.serving.bench")

CONNECTIONS = 64
GENERATOR_BOUND_BUSY = 0.9  # a server using less of its core than this at its "peak" was waiting for wrk ...
STEAL_WORTH_NAMING = 0.02  # ... or, on a VM, for the host: the report names steal time above this share
SERVER_CPU = 0  # servers run on this CPU, wrk on the next (pinned)
STEAL_KEYS = {"core_stolen_share": "servers' core", "wrk_core_stolen_share": "wrk's core"}  # steal_during's keys
SATURATED_SHORTFALL = 0.03  # a paced point that achieves less than 97% of its target rate ran saturated
STEADINESS_SECONDS = 3.0  # the core probe's run, before and after the latency points
UNSTEADY_SHARE = 0.01  # an ideal server at 80% load would be past the p99 target after more windows than this
TARGETS = {
    "min_speedup_vs_mlflow": 10.0,
    "min_fraction_of_ceiling": 0.5,
    "max_p99_ms_at_80": 10.0,
    "max_rss_mb": 400.0,
}

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


@dataclass(frozen=True)
class Candidate:
    """A server to measure: how to start it, where to post, and what to post."""

    key: str
    label: str
    path: str
    body: bytes
    command: Callable[[int], list[str]]
    env: dict[str, str]
    ready_path: str


def pinned(cpu: int, command: list[str]) -> list[str]:
    """Prefix with taskset when there are at least two CPUs (server and load generator apart)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


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


def _tree(pid: int) -> list[Any]:
    import psutil

    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(Exception):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def core_times(cpu: int) -> tuple[int, int] | None:
    """(steal, total) clock ticks of one CPU from /proc/stat: the time a hypervisor gave to another guest counts
    as steal; None where the file or the CPU is missing."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"cpu{cpu} "):
            fields = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            return (fields[7] if len(fields) > 7 else 0), sum(fields)
    return None


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of a CPU's time the host took between two core_times readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def both_cores() -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """core_times of the servers' core and of wrk's, read together."""
    return core_times(SERVER_CPU), core_times(SERVER_CPU + 1)


def steal_during(before: tuple[tuple[int, int] | None, tuple[int, int] | None]) -> dict[str, float | None]:
    """The share of the servers' core and of wrk's that the host took since ``before`` (both_cores())."""
    after = both_cores()
    return {key: stolen_share(then, now) for key, then, now in zip(STEAL_KEYS, before, after, strict=True)}


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree, counting once what its processes share with the largest one.

    Summing each process's RSS counts the interpreter and libraries that a parent shares with its worker (as
    mlflow's CLI does with its uvicorn worker) twice; so this is the largest RSS in the tree plus the memory unique
    to each other process (USS). An approximation: pages only the smaller processes share are not counted. For a
    single process it is its RSS; a process whose USS cannot be read counts its whole RSS.
    """
    sizes: list[tuple[int, int]] = []
    for proc in _tree(pid):
        with contextlib.suppress(Exception):
            rss = proc.memory_info().rss
            try:
                uss = proc.memory_full_info().uss
            except Exception:  # psutil.AccessDenied and the like: count it all, rather than nothing
                uss = rss
            sizes.append((rss, uss))
    if not sizes:
        return 0.0
    (largest, _), *others = sorted(sizes, reverse=True)
    return (largest + sum(uss for _, uss in others)) / 2**20


@contextlib.contextmanager
def started(candidate: Candidate, logs: Path) -> Iterator[tuple[str, int]]:
    """Start the candidate pinned to SERVER_CPU, wait until it answers the payload; always stop it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = logs / f"{candidate.key}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, candidate.command(port)),
            env=candidate.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{candidate.label} did not start:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + candidate.ready_path, timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        answer = httpx.post(
            url + candidate.path,
            content=candidate.body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"{candidate.label} answered {answer.status_code}: {answer.text[:300]}")
        yield url, proc.pid
    finally:
        stop_process(proc, 20, group=True)


def saturate(candidate: Candidate, url: str, pid: int, duration: float) -> dict[str, Any]:
    """One closed-loop run at saturation, with the server's CPU seconds per request."""
    cpu_before, cores_before = cpu_seconds(pid), both_cores()
    peak = wrk(url, candidate.path, candidate.body, duration, None)
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "peak_rps": peak["rps"],
        "peak_p99_ms": peak["p99_ms"],
        "errors": peak["errors"],
        "cpu_ms_per_request": 1000 * cpu / max(peak["requests"], 1),
        **steal_during(cores_before),
    }


def latency_points(candidate: Candidate, url: str, pid: int, peak_rps: float, duration: float) -> dict[str, Any]:
    """p50/p99 at 50% and 80% of the server's own peak, wrk paced to a fixed rate, with the server's CPU per request.

    The CPU per request is there because paced requests cost more than saturated ones (fewer ready sockets per loop
    wake-up, smaller batches): a point whose cost exceeds 1/share of the peak's runs saturated. The steal time of
    both cores is there because a host that takes wrk's core delays the requests (wrk's latency counts from each
    request's scheduled time) as surely as one that takes the server's.
    """
    points: dict[str, Any] = {}
    for share in (0.5, 0.8):
        target = share * peak_rps
        cpu_before, lag_before, cores_before = cpu_seconds(pid), loop_lag(url), both_cores()
        paced = wrk(url, candidate.path, candidate.body, duration, target)
        cpu_ms = 1000 * (cpu_seconds(pid) - cpu_before) / max(paced["requests"], 1)
        saturated = paced["rps"] < (1 - SATURATED_SHORTFALL) * target
        point = points[f"at_{int(share * 100)}"] = {
            "target_rps": target,
            "saturated": saturated,
            **paced,
            "cpu_ms_per_request": cpu_ms,
            **steal_during(cores_before),
        }
        if lag_before is not None and (lag_after := loop_lag(url)) is not None:
            point["loop_lag"] = lag_during(lag_before, lag_after)
    return points


def served_runtime(url: str, candidate: Candidate) -> str | None:
    """What answers predictions (``numpy`` or ``torchscript``), from our server's model metadata; None elsewhere.

    ``MLRELEASE_RUNTIME=auto`` falls back to TorchScript when the lowering does not check out: the numpy row's
    ratio means something only when the numpy runner really answered.
    """
    import httpx

    if not candidate.path.endswith(":predict") or candidate.ready_path != "/ready":
        return None
    try:
        meta = httpx.get(url + candidate.path.removesuffix(":predict"), timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    runtime = meta.get("runtime") if isinstance(meta, dict) else None
    return runtime if isinstance(runtime, str) else None


def loop_lag(url: str) -> dict[float, float] | None:
    """The server's event-loop lag histogram (cumulative counts by upper bound; +Inf as inf), or None without one."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        answer = httpx.get(url + "/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200 or not answer.headers.get("content-type", "").startswith("text/plain"):
        return None  # the bare servers answer every path with their fixed prediction
    try:
        buckets = {
            float(sample.labels["le"]): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
            if sample.name == "mlrelease_event_loop_lag_seconds_bucket"
        }
    except ValueError:
        return None
    return buckets or None


def lag_during(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Samples taken between two scrapes, and the share of them that ran 10 ms or more late."""
    samples = after[math.inf] - before[math.inf]
    late = samples - (after[0.01] - before[0.01])
    return {"samples": samples, "share_over_10ms": late / samples if samples else 0.0}


def core_steadiness(cpu: int, seconds: float) -> dict[str, Any]:
    """The steadiness probe (deploy/serving/steadiness.py) pinned to ``cpu``, in its own process.

    A probe that fails is recorded as ``{"error": ...}``: it must not cost the run's measurements.
    """
    command = [sys.executable, "-m", "deploy.serving.steadiness", "--seconds", f"{seconds:g}"]
    command += ["--behind-ms", f"{TARGETS['max_p99_ms_at_80']:g}"]
    try:
        proc = subprocess.run(
            pinned(cpu, command), capture_output=True, text=True, timeout=seconds + 60, check=True, env=base_env()
        )
        summary: dict[str, Any] = json.loads(proc.stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        log.warning("core steadiness probe failed: %s", exc)
        return {"error": str(exc)[-300:]}
    return summary


def measure_all(
    found: list[Candidate], duration: float, logs: Path, rounds: int, probe: bool = True
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """All servers up at once (idle ones cost nothing); saturation runs and then latency points interleaved in
    rounds; each server's peak, and each of its paced points, keeps its own median round.

    Interleaving spreads bursts of other work on a shared machine over every candidate alike; for an odd count
    the median neither rewards a lucky round nor punishes an unlucky one (for an even count it keeps the worse of
    the middle two). The servers' core is probed for steadiness just before and just after all rounds of latency
    points, a few seconds at each end of them (-> results, steadiness).
    """
    results: dict[str, dict[str, Any]] = {}
    steadiness: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        running = {c.key: stack.enter_context(started(c, logs)) for c in found}
        for c in found:
            wrk(running[c.key][0], c.path, c.body, 1, None)  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in found}
        for _ in range(rounds):
            for c in found:
                url, pid = running[c.key]
                runs[c.key].append(saturate(c, url, pid, duration))
        for c in found:
            results[c.key] = {"label": c.label, **median_round(runs[c.key])}
            runtime = served_runtime(running[c.key][0], c)
            if runtime is not None:
                results[c.key]["runtime"] = runtime
        if probe:
            steadiness["before_latency_points"] = core_steadiness(SERVER_CPU, STEADINESS_SECONDS)
        paced_rounds(found, running, results, duration, rounds)
        if probe:
            steadiness["after_latency_points"] = core_steadiness(SERVER_CPU, STEADINESS_SECONDS)
    return results, steadiness


def paced_rounds(
    found: list[Candidate],
    running: dict[str, tuple[str, int]],
    results: dict[str, dict[str, Any]],
    duration: float,
    rounds: int,
) -> None:
    """The latency points in interleaved rounds, like the peaks; each server's median round kept (-> results)."""
    points: dict[str, list[dict[str, Any]]] = {c.key: [] for c in found}
    for _ in range(rounds):
        for c in found:
            url, pid = running[c.key]
            points[c.key].append(latency_points(c, url, pid, results[c.key]["peak_rps"], duration))
    for c in found:
        result = results[c.key]
        result.update(median_points(points[c.key]))
        result["errors"] += sum(point["errors"] for share in ("at_50", "at_80") for point in result[share]["rounds"])
        result["rss_mb"] = rss_mb(running[c.key][1])
        log.info("%s: %.0f req/s peak, p99 at 80%% %.2f ms", c.label, result["peak_rps"], result["at_80"]["p99_ms"])


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median peak (the lower one for an even count), with every round's peak and errors."""
    ordered = sorted(rounds, key=lambda run: float(run["peak_rps"]))
    return {
        **ordered[(len(ordered) - 1) // 2],
        "peak_rps_rounds": [run["peak_rps"] for run in rounds],
        "cpu_ms_per_request_rounds": [run["cpu_ms_per_request"] for run in rounds],
        "errors": sum(run["errors"] for run in rounds),  # an error in any round shows, not only the median one's
    }


def median_points(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each paced point's round of median p99 (for an even count the higher, i.e. worse, one), chosen point by
    point, as the peak is its median round: one noisy spell of the shared machine then decides no verdict alone.

    The kept round's figures stay as they were measured (its own errors too); every round, whole, is under
    ``rounds`` (the row's error count sums them all).
    """
    kept: dict[str, Any] = {}
    for share in ("at_50", "at_80"):
        runs = [one[share] for one in rounds]
        ordered = sorted(runs, key=lambda point: float(point["p99_ms"]))
        kept[share] = {**ordered[len(ordered) // 2], "rounds": runs}
    return kept


def point_rounds(point: dict[str, Any]) -> list[dict[str, Any]]:
    """Every round of a paced point (the point alone when it was measured once, as in older reports)."""
    rounds: list[dict[str, Any]] = point.get("rounds") or [point]
    return rounds


def round_ratio(top: list[float], bottom: list[float], kept: float) -> float:
    """The median of per-round ratios of two servers measured in the same interleaved rounds (each pair shared a
    stretch of the machine's noise); ``kept`` (the ratio of their kept rounds) when the rounds do not pair up."""
    if not top or len(top) != len(bottom):
        return kept
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def cost_matched(results: dict[str, dict[str, Any]], ours: Candidate) -> list[Candidate]:
    """The bare protocol made to cost, per request, what our server spent beyond it at the peak: servers of our
    cost without our structure, measured after the others since their cost comes from them.

    Three of them (deploy/serving/bare.py): fixed work of that cost, which a slow core slows down as it does
    real work; half that work, which shows where this core's tail starts to miss the target; and a busy loop on
    the CPU clock of that cost, which a slow core does not lengthen (where it meets the target and its
    fixed-work twin misses, the miss comes with real work of that cost on this core, not with our structure).
    """
    if "mlrelease" not in results or "bare_plain" not in results:
        return []
    extra_us = 1000 * (results["mlrelease"]["cpu_ms_per_request"] - results["bare_plain"]["cpu_ms_per_request"])
    if extra_us <= 0:
        return []
    variants = [
        ("bare_work_matched", "--work-us", extra_us, f"+ {extra_us:.0f} us of fixed work per request (our cost)"),
        ("bare_work_half", "--work-us", extra_us / 2, f"+ {extra_us / 2:.0f} us of fixed work per request (half)"),
        ("bare_cpu_matched", "--burn-us", extra_us, f"+ {extra_us:.0f} us on the CPU clock per request (our cost)"),
    ]
    return [
        _plain_with(key, flag, us, f"bare asyncio protocol {label}, no model", ours)
        for key, flag, us, label in variants
    ]


def _plain_with(key: str, flag: str, microseconds: float, label: str, ours: Candidate) -> Candidate:
    py = sys.executable
    return Candidate(
        key,
        label,
        ours.path,
        ours.body,
        lambda p: [py, "-m", "deploy.serving.bare", "--plain", flag, f"{microseconds:.1f}", "--port", str(p)],
        base_env(),
        "/",
    )


def payload(model_dir: Path) -> tuple[list[float], str]:
    """One instance: the training mean of every feature (from the card); and the model name."""
    from mlrelease.core.modelcard import ModelCard

    card = ModelCard.read(model_dir)
    return [round(v, 4) for v in card.preprocessing.mean], card.name


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLRELEASE_")}
    repo = str(Path(__file__).resolve().parents[2])
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"})
    return env


def register_for_mlflow(model_dir: Path, home: Path) -> tuple[str, dict[str, str]]:
    """Log the same bundle as an MLflow pyfunc (registry.register) in a throwaway registry -> URI, env."""
    from mlrelease.core.modelcard import ModelCard
    from mlrelease.core.settings import Settings
    from registry.register import register_bundle

    private: dict[str, Any] = {"home": home, "MLFLOW_TRACKING_URI": None}  # a throwaway sqlite registry
    settings = Settings(**private)
    name = ModelCard.read(model_dir).name
    version, _ = register_bundle(model_dir, name, metrics={}, params={}, tags={"purpose": "bench"}, settings=settings)
    env = base_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn`
    return f"models:/{name}/{version.version}", {**env, "MLFLOW_TRACKING_URI": settings.tracking_uri}


def candidates(model_dir: Path, work: Path, skip_mlflow: bool) -> list[Candidate]:
    from mlrelease.core.modelcard import ModelCard

    row, name = payload(model_dir)
    v1 = json.dumps({"instances": [row]}, separators=(",", ":")).encode()
    py = sys.executable
    found = [
        Candidate(
            "bare_asgi",
            "bare ASGI (no model)",
            f"/v1/models/{name}:predict",
            v1,
            lambda p: [py, "-m", "deploy.serving.bare", "--port", str(p)],
            base_env(),
            "/",
        ),
        Candidate(
            "bare_fast",
            "bare, same fast path (no model)",
            f"/v1/models/{name}:predict",
            v1,
            lambda p: [py, "-m", "deploy.serving.bare", "--fast", "--port", str(p)],
            base_env(),
            "/",
        ),
        Candidate(
            "bare_plain",
            "bare asyncio protocol, no framework (no model)",
            f"/v1/models/{name}:predict",
            v1,
            lambda p: [py, "-m", "deploy.serving.bare", "--plain", "--port", str(p)],
            base_env(),
            "/",
        ),
        ours := Candidate(
            "mlrelease",
            "mlrelease server",
            f"/v1/models/{name}:predict",
            v1,
            lambda p: [py, "-m", "deploy.serving", "--model-dir", str(model_dir), "--port", str(p)],
            base_env(),
            "/ready",
        ),
        replace(
            ours,
            key="mlrelease_numpy",
            label="mlrelease server, numpy runner (MLRELEASE_RUNTIME=auto)",
            env={**ours.env, "MLRELEASE_RUNTIME": "auto"},
        ),
    ]
    if not skip_mlflow:
        uri, env = register_for_mlflow(model_dir, work / "mlflow-home")
        mlflow_bin = str(Path(py).with_name("mlflow"))
        names = ModelCard.read(model_dir).feature_names  # the MLflow signature is column-based: named records
        body = json.dumps({"inputs": [dict(zip(names, row, strict=True))]}, separators=(",", ":")).encode()
        found.append(
            Candidate(
                "mlflow",
                "mlflow models serve",
                "/invocations",
                body,
                lambda p: [
                    mlflow_bin,
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(p),
                    "-w",
                    "1",
                ],
                env,
                "/ping",
            )
        )
    return found


def summarize(results: dict[str, dict[str, Any]], steadiness: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ratios and pass/fail against the targets; the p99 verdict names the model-less servers that met it on the
    same core in the same run, and whether the steadiness probe found the core unsteady."""
    ours = results["mlrelease"]
    ratios: dict[str, float] = {"of_bare_asgi_ceiling": ours["peak_rps"] / results["bare_asgi"]["peak_rps"]}
    numpy_row = results.get("mlrelease_numpy")
    if numpy_row is not None and not fell_back(numpy_row):
        ratios["numpy_runner_vs_torchscript"] = numpy_row["peak_rps"] / ours["peak_rps"]
    again = results.get("mlrelease_beside_matched")
    for key in ("bare_work_matched", "bare_cpu_matched"):
        if key in results and again is not None:
            matched, name = results[key], key.removeprefix("bare_")
            ratios[f"{name}_cpu_vs_ours_at_peak"] = round_ratio(
                matched.get("cpu_ms_per_request_rounds", []),
                again.get("cpu_ms_per_request_rounds", []),
                matched["cpu_ms_per_request"] / again["cpu_ms_per_request"],
            )
            ratios[f"{name}_cpu_vs_ours_at_80"] = round_ratio(
                [point["cpu_ms_per_request"] for point in point_rounds(matched["at_80"])],
                [point["cpu_ms_per_request"] for point in point_rounds(again["at_80"])],
                matched["at_80"]["cpu_ms_per_request"] / again["at_80"]["cpu_ms_per_request"],
            )
    if "bare_fast" in results:
        ratios["of_bare_same_fast_path"] = ours["peak_rps"] / results["bare_fast"]["peak_rps"]
    checks = {
        "fraction_of_ceiling": (ratios["of_bare_asgi_ceiling"], TARGETS["min_fraction_of_ceiling"], ">="),
        "p99_ms_at_80": (ours["at_80"]["p99_ms"], TARGETS["max_p99_ms_at_80"], "<="),
        "rss_mb": (ours["rss_mb"], TARGETS["max_rss_mb"], "<="),
    }
    if "mlflow" in results:
        ratios["vs_mlflow"] = ours["peak_rps"] / results["mlflow"]["peak_rps"]
        ratios["cpu_per_request_vs_mlflow"] = ours["cpu_ms_per_request"] / results["mlflow"]["cpu_ms_per_request"]
        checks["speedup_vs_mlflow"] = (ratios["vs_mlflow"], TARGETS["min_speedup_vs_mlflow"], ">=")
    targets = {
        key: {
            "value": value,
            "target": f"{op} {limit:g}",
            "pass": value >= limit if op == ">=" else value <= limit,
        }
        for key, (value, limit, op) in checks.items()
    }
    targets["p99_ms_at_80"]["met_on_this_core_by"] = met_by_model_less(results)
    targets["p99_ms_at_80"]["rounds"] = [point["p99_ms"] for point in point_rounds(ours["at_80"])]
    if not steadiness:
        return {"ratios": ratios, "targets": targets}
    probes = [probe for probe in steadiness.values() if "error" not in probe]
    if probes:
        behind = max(probe["ideal_server_at_load"]["80%"]["share_of_windows_behind"] for probe in probes)
        targets["p99_ms_at_80"]["core_unsteady"] = behind > UNSTEADY_SHARE
    return {"ratios": ratios, "targets": targets, "steadiness": steadiness}


def fell_back(numpy_row: dict[str, Any]) -> bool:
    """The numpy-runner row was answered by TorchScript (``auto`` found no checked lowering)."""
    return numpy_row.get("runtime", "numpy") != "numpy"


def met_by_model_less(results: dict[str, dict[str, Any]]) -> list[str]:
    """The servers without a model whose own p99 at 80% of their peak met the target in this run: the same core
    allowed it to a server of their cost (the fixed-work references of our cost and half of it say most about
    ours; the CPU-clock one shows what the core's slow stretches add to real work, since they cannot lengthen it)."""
    limit = TARGETS["max_p99_ms_at_80"]
    bare = [item for key, item in results.items() if key.startswith("bare")]
    return [item["label"] for item in bare if item["at_80"]["p99_ms"] <= limit]


def each_round(point: dict[str, Any]) -> str:
    """``rounds 11.20 / 5.00 / 6.10`` for a point measured in rounds (the kept one is their median); else empty."""
    rounds = point_rounds(point)
    return "rounds " + " / ".join(f"{one['p99_ms']:.2f}" for one in rounds) if len(rounds) > 1 else ""


def saturated_point(label: str, share: int, point: dict[str, Any], percent: str = "%") -> str:
    """The point named if any of its rounds ran saturated (with how many, and whether the kept one did); else empty."""
    rounds = point_rounds(point)
    many = sum(bool(one["saturated"]) for one in rounds)
    if not many:
        return ""
    kept = "" if point["saturated"] else ", not the kept one"
    return f"{label} at {share}{percent}" + (f" ({many} of {len(rounds)} rounds{kept})" if len(rounds) > 1 else "")


def lag_over_rounds(point: dict[str, Any]) -> dict[str, float] | None:
    """The loop-lag samples of every round of a point taken together; None where a round has no lag reading."""
    lags = [one.get("loop_lag") for one in point_rounds(point)]
    if not all(lags):
        return None
    samples = sum(lag["samples"] for lag in lags if lag)
    late = sum(lag["samples"] * lag["share_over_10ms"] for lag in lags if lag)
    return {"samples": samples, "share_over_10ms": late / samples if samples else 0.0}


def server_row(item: dict[str, Any]) -> str:
    """One server's table row: peak, the paced points (each round's p99 where measured in rounds), CPU, memory."""
    a50, a80 = item["at_50"], item["at_80"]
    peak_cpu, paced_cpu = item["cpu_ms_per_request"], a80.get("cpu_ms_per_request")
    cpu = f"{peak_cpu:.3f}" + (f" / {paced_cpu:.3f} ({paced_cpu / peak_cpu:.2f}x)" if paced_cpu else "")
    rounds_50, rounds_80 = each_round(a50), each_round(a80)
    at_50 = f"{a50['p50_ms']:.2f} / {a50['p99_ms']:.2f}" + (f" ({rounds_50})" if rounds_50 else "")
    at_80 = f"{a80['p99_ms']:.2f} (p50 {a80['p50_ms']:.2f}" + (f"; {rounds_80})" if rounds_80 else ")")
    return (
        f"| {item['label']} | {item['peak_rps']:,.0f} | {at_50} | {at_80} | "
        f"{a80['rps']:,.0f} / {a80['target_rps']:,.0f} | {cpu} | {item['rss_mb']:.0f} | {item['errors']} |"
    )


def point_notes(servers: dict[str, dict[str, Any]]) -> list[str]:
    """Under the table: which figures are the kept rounds', saturated points, event-loop lag over all rounds."""
    lines: list[str] = []
    rounds = paced_round_count(servers)
    if rounds > 1:
        lines.append(
            f"- each paced point (p50, p99, req/s achieved, CPU at 80%) is its round of median p99 of {rounds} "
            "interleaved rounds; every round's p99 is in brackets, every round whole in the JSON"
        )
    saturated = [
        saturated_point(item["label"], share, item[f"at_{share}"]) for item in servers.values() for share in (50, 80)
    ]
    if any(saturated):
        named = ", ".join(point for point in saturated if point)
        lines.append(f"- paced points over 3% short of their target rate (saturated there): {named}")
    steal = paced_steal(servers)
    if steal:
        lines.append(f"- the host's share (steal) during the paced points at 80%, over all servers and rounds: {steal}")
    for item in servers.values():
        lags = [lag_over_rounds(item[f"at_{share}"]) for share in (50, 80)]
        if lags[0] is not None and lags[1] is not None:
            lines.append(
                f"- {item['label']}: its event-loop timer ran 10 ms or more late in {lags[0]['share_over_10ms']:.1%} "
                f"of {lags[0]['samples']:.0f} samples at 50%, {lags[1]['share_over_10ms']:.1%} of "
                f"{lags[1]['samples']:.0f} at 80%" + (f" (all {rounds} rounds)" if rounds > 1 else "")
            )
    return lines


def paced_round_count(servers: dict[str, dict[str, Any]]) -> int:
    """How many rounds the paced points ran in (1 in reports from before the rounds)."""
    return max(len(point_rounds(item["at_80"])) for item in servers.values())


def paced_steal(servers: dict[str, dict[str, Any]]) -> str:
    """``servers' core 0-12%, wrk's core 3-48%`` over every round of every 80% point that read them; else empty."""
    said = []
    for key, core in STEAL_KEYS.items():
        shares = [
            one[key] for item in servers.values() for one in point_rounds(item["at_80"]) if one.get(key) is not None
        ]
        if shares:
            said.append(f"{core} {min(shares):.0%}-{max(shares):.0%}")
    return ", ".join(said)


def steal_rounds(point: dict[str, Any]) -> list[list[float]] | None:
    """[servers' core, wrk's core] steal shares of every round of a paced point; None where a round lacks one."""
    rounds = point_rounds(point)
    if any(one.get(key) is None for one in rounds for key in STEAL_KEYS):
        return None
    return [[round(one[key], 3) for key in STEAL_KEYS] for one in rounds]


def peak_notes(servers: dict[str, dict[str, Any]]) -> list[str]:
    """Servers busy under 90% of their core at their peak: wrk or, with steal time, the host set that peak."""
    lines: list[str] = []
    for item in servers.values():
        busy = item["peak_rps"] * item["cpu_ms_per_request"] / 1000  # share of its one core the server used
        stolen = item.get("core_stolen_share")
        if busy >= GENERATOR_BOUND_BUSY:
            continue
        if stolen is not None and stolen >= STEAL_WORTH_NAMING:
            of_wrk = item.get("wrk_core_stolen_share")
            also = f" and {of_wrk:.0%} of wrk's" if of_wrk is not None else ""
            lines.append(
                f"- {item['label']}: busy {busy:.0%} of its core at its peak, while the host took {stolen:.0%} of "
                f"that core{also} (steal): the host or wrk, not the server, set it"
            )
        else:
            lines.append(f"- {item['label']}: busy {busy:.0%} of its core at its peak: wrk, not the server, set it")
    return lines


def verdicts(report: dict[str, Any]) -> list[str]:
    """Ratios, then each target's value and verdict (a p99 measured in rounds with every round's value)."""
    lines = [f"- {key}: {value:.2f}" for key, value in report["ratios"].items()]
    for key, check in report["targets"].items():
        verdict = "PASS" if check["pass"] else "FAIL"
        if not check["pass"] and check.get("met_on_this_core_by"):
            verdict += f" (met on the same core by: {', '.join(check['met_on_this_core_by'])})"
        elif not check["pass"] and check.get("core_unsteady"):
            verdict += " (the servers' core was unsteady: see the probe below)"
        rounds = check.get("rounds", [])
        spread = (
            f" (median of {len(rounds)} rounds: {' / '.join(f'{v:.2f}' for v in rounds)})" if len(rounds) > 1 else ""
        )
        lines.append(f"- target {key} {check['target']}: {check['value']:.2f}{spread} -> {verdict}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    servers = report["servers"]
    lines = [
        "| server | peak req/s | p50 / p99 at 50% (ms) | p99 at 80% (ms) | 80% point req/s achieved / target "
        "| CPU ms/req at peak / at 80% | RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(server_row(item) for item in servers.values()),
        "",
        *point_notes(servers),
        *peak_notes(servers),
    ]
    numpy_row = servers.get("mlrelease_numpy")
    if numpy_row is not None and fell_back(numpy_row):
        answered = numpy_row["runtime"]
        lines.append(f"- {numpy_row['label']}: answered by {answered} (no checked lowering), no numpy ratio")
    lines += verdicts(report)
    for when, probe in report.get("steadiness", {}).items():
        said = f"probe failed: {probe['error']}" if "error" in probe else describe(probe)
        lines.append(f"- servers' core (CPU {SERVER_CPU}), {when.replace('_', ' ')}: {said}")
    lines.append(f"\n{report['setup']}\n")
    return "\n".join(lines)


def run(model_dir: Path, out: Path, duration: float, skip_mlflow: bool, rounds: int = 3) -> dict[str, Any]:
    """Measure every candidate in turn and write the JSON and markdown reports."""
    import torch

    started_at = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        found = candidates(model_dir, work, skip_mlflow)
        results, steadiness = measure_all(found, duration, work, rounds)
        ours = next(c for c in found if c.key == "mlrelease")
        matched = cost_matched(results, ours)
        features = len(json.loads(ours.body)["instances"][0])
        if matched:  # measured beside our server again: the same stretch of the machine's noise
            again = replace(ours, key="mlrelease_beside_matched", label="mlrelease server, again beside the next rows")
            results.update(measure_all([again, *matched], duration, work, rounds, probe=False)[0])
    report = {
        "servers": results,
        **summarize(results, steadiness),
        "setup": (
            f"Same model ({model_dir}), same instance ({features} features; rows for the mlrelease and bare servers, "
            f"named `inputs` records for MLflow, whose signature is column-based), wrk 1 thread x {CONNECTIONS} "
            f"connections for {duration:g} s per point on CPU {SERVER_CPU + 1}, servers on CPU {SERVER_CPU}; "
            "saturation runs interleaved, "
            f"median of {rounds}; latency points paced by a Lua scheduler at 50%/80% of each server's own peak, "
            f"interleaved, the round of median p99 of {rounds} kept. "
            f"1-minute load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} (shared machine)."
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
        },
        "duration_s": duration,
        "connections": CONNECTIONS,
        "elapsed_s": time.monotonic() - started_at,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


def run_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One run's figures for the runs file (reports/bench_serving_runs.json): the spread the README quotes."""
    servers = report["servers"]
    lags = {k: [lag_over_rounds(v[f"at_{p}"]) for p in (50, 80)] for k, v in servers.items()}
    return {
        "paced_rounds": paced_round_count(servers),
        "peak_rps": {k: round(v["peak_rps"]) for k, v in servers.items()},
        "p99_ms_at_50": {k: round(v["at_50"]["p99_ms"], 2) for k, v in servers.items()},
        "p99_ms_at_80": {k: round(v["at_80"]["p99_ms"], 2) for k, v in servers.items()},
        "cpu_ms_per_request_peak_vs_at_80": {
            k: [
                round(v["cpu_ms_per_request"], 4),
                round(v["at_80"]["cpu_ms_per_request"], 4),
                round(v["at_80"]["cpu_ms_per_request"] / v["cpu_ms_per_request"], 2),
            ]
            for k, v in servers.items()
        },
        "loop_lag_share_over_10ms_at_50_80": {
            k: [lag["share_over_10ms"] for lag in pair if lag] for k, pair in lags.items() if all(pair)
        },
        "saturated_points": [
            named
            for k, v in servers.items()
            for p in (50, 80)
            if (named := saturated_point(k, p, v[f"at_{p}"], percent=""))
        ],
        "p99_ms_at_80_rounds": {
            k: [round(one["p99_ms"], 2) for one in point_rounds(v["at_80"])] for k, v in servers.items()
        },
        "wrk_core_stolen_share_at_peak": {
            k: round(v["wrk_core_stolen_share"], 3)
            for k, v in servers.items()
            if v.get("wrk_core_stolen_share") is not None
        },
        "cores_stolen_share_at_80_servers_wrk": {
            k: steal for k, v in servers.items() if (steal := steal_rounds(v["at_80"])) is not None
        },
        "servers_core_stolen_share_at_peak": {
            k: round(v["core_stolen_share"], 3) for k, v in servers.items() if v.get("core_stolen_share") is not None
        },
        "ratios": {k: round(v, 3) for k, v in report["ratios"].items()},
        "p99_target_met_on_this_core_by": report["targets"]["p99_ms_at_80"]["met_on_this_core_by"],
        "reference_labels": {
            k: v["label"]
            for k, v in servers.items()
            if k in ("bare_work_matched", "bare_work_half", "bare_cpu_matched")
        },
        "servers_core_ideal_server_at_80_percent_load": {
            k: {
                "share_of_windows_over_10ms_behind": round(
                    v["ideal_server_at_load"]["80%"]["share_of_windows_behind"], 3
                )
            }
            for k, v in report.get("steadiness", {}).items()
            if "error" not in v
        },
        "targets_pass": {k: v["pass"] for k, v in report["targets"].items()},
        "load_average": report["machine"]["load_average_1m_before_after"],
        "errors": {k: v["errors"] for k, v in servers.items()},
        "runtime_of_numpy_row": servers.get("mlrelease_numpy", {}).get("runtime"),
    }


def write_runs(path: Path, summaries: list[dict[str, Any]], what: str) -> None:
    """The runs file: this set of runs, with the sets already in the file kept under ``earlier_runs``."""
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        earlier = [{"what": old["what"], "runs": old["runs"]}, *old.get("earlier_runs", [])]
    path.write_text(json.dumps({"what": what, "runs": summaries, "earlier_runs": earlier}, indent=1) + "\n")


def head_commit() -> str:
    """The repository's short commit, or "unknown" outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="bench_serving", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench_serving.json"))
    parser.add_argument(
        "--duration", type=positive_int, default=4, help="whole seconds per wrk point (wrk reads no fractions)"
    )
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument(
        "--runs", type=positive_int, default=1, help="whole runs; from 2, their spread goes to <out>_runs.json"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="interleaved rounds per server of the saturation runs and of the latency points (median of each kept)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        log.error("wrk is not installed (scripts/install_debs.sh installs it)")
        return 2
    report = run(args.model_dir.resolve(), args.out, args.duration, args.skip_mlflow, args.rounds)
    sys.stdout.write(markdown(report) + "\n")
    if args.runs > 1:
        summaries = [run_summary(report)]
        with tempfile.TemporaryDirectory(prefix="bench-serving-runs-") as tmp:
            for i in range(2, args.runs + 1):
                more = run(
                    args.model_dir.resolve(), Path(tmp) / f"run{i}.json", args.duration, args.skip_mlflow, args.rounds
                )
                summaries.append(run_summary(more))
        what = (
            f"{args.runs} consecutive runs of scripts/bench_serving.py at commit {head_commit()} "
            f"(the first is {args.out.name}), for the spread quoted in the README"
        )
        write_runs(args.out.with_name(f"{args.out.stem}_runs.json"), summaries, what)
    failed = [key for key, check in report["targets"].items() if not check["pass"]]
    if failed:
        log.warning("targets missed: %s", ", ".join(failed))
    return 0
