"""Measure the incident rollback: time from `scripts/rollback.sh` to all traffic on the previous version, and
failed requests of a load generator running through it, with each slot runtime side by side (processes from the
virtualenv; the versions' serving images in containers). Writes benchmarks/results/bench_rollback.json.

Usage: .venv/bin/python benchmarks/bench_rollback.py [--bundle models] [--runs 3] [--rps 100]
       [--runtimes process,container] [--out FILE]
Each runtime gets a throwaway workspace (own sqlite registry, own state folder, loopback ports only): the bundle is
registered as version 1 and a byte-different, behaviour-identical copy as version 2 (for containers, each is built
into its image with `mlrelease build`'s code, and the images are removed at the end); then each run promotes
version 2 over a warm version 1 and rolls back under load. The runtimes' runs alternate, so the machine's noise
falls on both alike.
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


def build_images(home: Path, versions: list[str]) -> list[str]:
    """Build each version's serving image and tag it on the version (as `mlrelease build`); return the refs."""
    from deploy.image.stage import run_build
    from mlrelease.core.settings import Settings

    refs = []
    for version in versions:
        report = run_build(
            REPO,
            REPO / "params.yaml",
            None,
            version,
            home / "reports" / f"build-{version}.json",
            settings=Settings(home=home),
        )
        refs.append(str(report["image_ref"]))
    return refs


def setup(home: Path, bundle: Path, model_name: str, runtime: str) -> tuple[str, str, list[str]]:
    """Register the bundle and a same-behaviour variant (built into images for containers); put version 1 in
    production. Returns both versions and the images built."""
    shutil.copy(REPO / "params.yaml", home / "params.yaml")
    v1 = register(bundle, home, model_name, "bench-base")
    v2 = register(make_variant(bundle, home / "variant", "same"), home, model_name, "bench-same")
    images = build_images(home, [v1, v2]) if runtime == "container" else []
    proc = cli(
        home,
        "promote",
        "production",
        "--version",
        v1,
        "--force",
        "--reason",
        "bench: baseline",
        MLRELEASE_RUNTIME=runtime,
    )
    if proc.returncode != 0:
        raise SystemExit(f"could not put version {v1} in production:\n{proc.stdout}\n{proc.stderr}")
    return v1, v2, images


def one_run(home: Path, bundle: Path, model_name: str, good: str, bad: str, rps: float, runtime: str) -> dict[str, Any]:
    """Promote ``bad`` over a warm ``good``, then roll back while the load generator runs."""
    from deploy.targets import make_target
    from mlrelease.core.settings import Settings

    proc = cli(
        home,
        "promote",
        "production",
        "--version",
        bad,
        "--force",
        "--reason",
        "bench: to roll back",
        MLRELEASE_RUNTIME=runtime,
    )
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
            env=env_for(home, MLRELEASE_RUNTIME=runtime),
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


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One runtime's figures against the target (1 s to all traffic on the previous version, 0 failed)."""
    switch = [r["switch_s"] for r in runs]
    failed = sum(r["failed"] for r in runs)
    return {
        "switch_s": {"median": statistics.median(switch), "max": max(switch)},
        "command_s": {"median": statistics.median(r["command_s"] for r in runs)},
        "failed_requests": failed,
        "requests": sum(r["requests"] for r in runs),
        "met": max(switch) <= 1.0 and failed == 0 and all(r["exit_code"] == 0 for r in runs),
        "runs": runs,
    }


def remove_images(refs: list[str]) -> None:
    """Remove the images the benchmark built (their layers stay cached for the next build)."""
    if refs:
        from deploy.engine import detect_engine

        detect_engine().run("rmi", "-f", *refs, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=REPO / "models")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--runtimes", default="process,container", help="comma-separated: process, container")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_rollback.json")
    args = parser.parse_args(argv)
    from mlrelease.core.modelcard import verify_bundle

    model_name = verify_bundle(args.bundle).name
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    homes = {rt: Path(tempfile.mkdtemp(prefix=f"bench-rollback-{rt}-")) for rt in runtimes}
    runs: dict[str, list[dict[str, Any]]] = {rt: [] for rt in runtimes}
    built: list[str] = []
    try:
        versions = {}
        for rt in runtimes:
            good, bad, images = setup(homes[rt], args.bundle, model_name, rt)
            versions[rt] = (good, bad)
            built += images
        for _ in range(args.runs):
            for rt in runtimes:  # alternating: the machine's noise falls on both
                runs[rt].append(one_run(homes[rt], args.bundle, model_name, *versions[rt], args.rps, rt))
    finally:
        for home in homes.values():
            stop_everything(home)
            shutil.rmtree(home, ignore_errors=True)
        remove_images(built)
    report = {
        "target": {"max_switch_s": 1.0, "failed_requests": 0},
        "rps": args.rps,
        "runtimes": {rt: summarize(runs[rt]) for rt in runtimes},
    }
    report["met"] = all(r["met"] for r in report["runtimes"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    short = {rt: {k: v for k, v in r.items() if k != "runs"} for rt, r in report["runtimes"].items()}
    print(json.dumps({"met": report["met"], "runtimes": short}, indent=2))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
