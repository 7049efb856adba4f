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
with the opt-in numpy runner of its graph (MLRELEASE_MODEL_RUNTIME=auto, deploy/serving/lowering.py). Last, the bare
protocol is made to cost per request what one cost our server at the peak (servers of our cost without our
structure: fixed work of that cost, half of it, and a busy loop on the CPU clock; see ``cost_matched``),
interleaved with our server measured again, so all share a stretch of the machine's noise; their CPU per request
is compared at the peak and at 80%. The servers' core is probed for steadiness (benchmarks/steadiness.py) just
before and after the first latency points, as a measure of the machine's noise.
Writes benchmarks/results/bench_serving.json and a markdown table next to it; docs/benchmarks.md has the figures.
Run: ``.venv/bin/python benchmarks/bench_serving.py --model-dir models --runs 3``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import REPO, RESULTS
from benchmarks.serving.config import CONNECTIONS, SERVER_CPU
from benchmarks.serving.report import markdown, run_summary, summarize, write_runs
from benchmarks.serving.runner import measure_all
from benchmarks.serving.servers import candidates, cost_matched

log = logging.getLogger("benchmarks.bench_serving")


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


def head_commit() -> str:
    """The repository's short commit, or "unknown" outside a git checkout."""
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
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
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serving.json")
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
            f"{args.runs} consecutive runs of benchmarks/bench_serving.py at commit {head_commit()} "
            f"(the first is {args.out.name}), for the spread quoted in docs/benchmarks.md"
        )
        write_runs(args.out.with_name(f"{args.out.stem}_runs.json"), summaries, what)
    failed = [key for key, check in report["targets"].items() if not check["pass"]]
    if failed:
        log.warning("targets missed: %s", ", ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
