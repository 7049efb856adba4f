"""Measure the incident rollback: time from `scripts/rollback.sh` to all traffic on the previous version, and
failed requests of a load generator running through it. Writes benchmarks/results/bench_rollback.json.

Usage: .venv/bin/python benchmarks/bench_rollback.py [--bundle models] [--runs 3] [--rps 100] [--out FILE]
It builds a throwaway workspace (own sqlite registry, own state folder, loopback ports only): the bundle is
registered as version 1 and a byte-different, behaviour-identical copy as version 2; then each run promotes
version 2 over a warm version 1 and rolls back under load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import REPO, RESULTS
from deploy.targets.traffic import LoadDriver, sample_rows
from tests.release_helpers import cli, env_for, make_variant, register, stop_everything


def setup(home: Path, bundle: Path, model_name: str) -> tuple[str, str]:
    """Register the bundle and a same-behaviour variant; put version 1 in production."""
    shutil.copy(REPO / "params.yaml", home / "params.yaml")
    v1 = register(bundle, home, model_name, "bench-base")
    v2 = register(make_variant(bundle, home / "variant", "same"), home, model_name, "bench-same")
    proc = cli(home, "promote", "production", "--version", v1, "--force", "--reason", "bench: baseline")
    if proc.returncode != 0:
        raise SystemExit(f"could not put version {v1} in production:\n{proc.stdout}\n{proc.stderr}")
    return v1, v2


def one_run(home: Path, bundle: Path, model_name: str, good: str, bad: str, rps: float) -> dict[str, Any]:
    """Promote ``bad`` over a warm ``good``, then roll back while the load generator runs."""
    from deploy.targets import make_target
    from mlrelease.core.settings import Settings

    proc = cli(home, "promote", "production", "--version", bad, "--force", "--reason", "bench: to roll back")
    if proc.returncode != 0:
        raise SystemExit(f"promotion failed:\n{proc.stdout}\n{proc.stderr}")
    settings = Settings(home=home)
    entry = make_target(settings.state_dir).entry_url("production")
    assert entry is not None
    driver = LoadDriver(
        entry,
        model_name,
        sample_rows(bundle, 64),
        rps=rps,
        concurrency=4,
        max_seconds=60,
        keep_timeline=True,
        headers=settings.prediction_headers(),
    )
    with driver:
        time.sleep(1.5)
        t0 = time.monotonic()
        rb = subprocess.run(
            [str(REPO / "scripts" / "rollback.sh"), "--reason", "bench"],
            cwd=home,
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        command_s = time.monotonic() - t0
        time.sleep(1.0)
    result = driver.result
    last_bad = max((start for start, _, _, version in result.timeline if version == bad), default=t0)
    first_good = min(
        (start for start, _, _, version in result.timeline if version == good and start > t0), default=float("nan")
    )
    return {
        "exit_code": rb.returncode,
        "switch_s": round(max(last_bad - t0, 0.0), 4),
        "first_good_after_s": round(first_good - t0, 4),
        "command_s": round(command_s, 3),
        "requests": result.total,
        "failed": result.failed,
        "statuses": dict(result.statuses),
        "rollback_output": rb.stdout.strip().splitlines(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=REPO / "models")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_rollback.json")
    args = parser.parse_args(argv)
    from mlrelease.core.modelcard import verify_bundle

    model_name = verify_bundle(args.bundle).name
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp:
        home = Path(tmp)
        try:
            good, bad = setup(home, args.bundle, model_name)
            runs = [one_run(home, args.bundle, model_name, good, bad, args.rps) for _ in range(args.runs)]
        finally:
            stop_everything(home)
    switch = [r["switch_s"] for r in runs]
    report = {
        "runs": runs,
        "target": {"max_switch_s": 1.0, "failed_requests": 0},
        "switch_s": {"median": statistics.median(switch), "max": max(switch)},
        "failed_requests": sum(r["failed"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "met": max(switch) <= 1.0 and sum(r["failed"] for r in runs) == 0 and all(r["exit_code"] == 0 for r in runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
