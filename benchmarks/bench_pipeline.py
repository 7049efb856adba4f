"""Time `dvc repro` from a clean copy of the repository and a no-op `dvc repro`, against the issue's targets.

Runs in a throwaway copy (its own git, DVC cache and sqlite registry), so it never touches your workspace.
Writes benchmarks/results/bench_pipeline.json and prints a table. Usage: .venv/bin/python benchmarks/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import RESULTS
from tests.workspace import Workspace, make_workspace

TARGETS = {"clean_repro_s": 180.0, "noop_repro_s": 10.0}


def _timed(ws: Workspace, *args: str) -> float:
    start = time.perf_counter()
    ws.dvc(*args)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_pipeline.json")
    out = parser.parse_args(argv).out
    with tempfile.TemporaryDirectory(prefix="mlrelease-bench-") as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        clean = _timed(ws, "repro")
        noop = min(_timed(ws, "repro") for _ in range(3))
    measured = {"clean_repro_s": round(clean, 1), "noop_repro_s": round(noop, 2)}
    result = {
        **measured,
        "targets_s": TARGETS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write("| measure | time | target | time / target |\n|---|---|---|---|\n")
    for key, target in TARGETS.items():
        sys.stdout.write(f"| {key} | {measured[key]} s | <= {target:g} s | {measured[key] / target:.2f} |\n")
    sys.stdout.write(f"written: {out}\n")
    return 0 if all(measured[k] <= t for k, t in TARGETS.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
