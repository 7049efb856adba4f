"""What the container runtime costs beside the process runtime: start-up to ready and disk per running slot.

Usage: .venv/bin/python benchmarks/bench_runtime.py [--bundle models] [--rounds 3] [--replicas 2] [--out FILE]
Builds the bundle's serving image once (removed at the end), then, for each runtime in turn and each round:
- a cold slot: deploy of ``--replicas`` replicas until all answer /ready as the version (for containers the first slot
  of a digest includes creating its working container);
- a second slot of the same version (containers: it shares the first one's working container);
- a supervised restart: ``kill -9`` of one replica's server until the port answers /ready again;
- disk: what the working containers add to the engine's storage while both slots run, and what is left once they
  stop. Writes benchmarks/results/bench_runtime.json. docker and podman are measured where one answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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

STORAGE = Path("/var/lib/containers/storage")


def storage_bytes() -> int:
    """Bytes the engine's storage takes on disk (du: vfs keeps every layer and working container as full copies)."""
    if not STORAGE.exists():
        return 0
    out = subprocess.run(["du", "-sb", str(STORAGE)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out else 0


def ready_again(url: str, killed: int, port: int, timeout: float = 60) -> float:
    """Seconds until ``port`` answers /ready from a process other than ``killed``."""
    from mlrelease.core.http import probe
    from mlrelease.core.proc import listeners

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pids = listeners(port)
        if pids and pids[0] != killed and probe(f"{url}/ready", timeout=0.5)[0] == 200:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("nan")


def one_round(runtime: str, bundle: Path, image: str | None, replicas: int) -> dict[str, Any]:
    """Start two slots of one version, kill a replica, stop both; the timings and disk of this round."""
    from deploy.targets.local.target import LocalTarget
    from mlrelease.core.proc import listeners

    state = Path(tempfile.mkdtemp(prefix=f"bench-runtime-{runtime}-"))
    target = LocalTarget(state, runtime=runtime, replicas={"production": replicas}, routed=())
    before = storage_bytes() if runtime == "container" else 0
    try:
        t0 = time.monotonic()
        target.deploy("production", "stable", bundle, "1", image=image)
        cold = time.monotonic() - t0
        t0 = time.monotonic()
        target.deploy("production", "previous", bundle, "1", image=image)
        second = time.monotonic() - t0
        running = storage_bytes() - before if runtime == "container" else 0
        replica = target.slot("production", "stable").replicas[0]  # type: ignore[union-attr]
        killed = listeners(replica.port)[0]
        os.kill(killed, signal.SIGKILL)
        restart = ready_again(replica.url, killed, replica.port)
    finally:
        target.stop_all()
        shutil.rmtree(state, ignore_errors=True)
    left = storage_bytes() - before if runtime == "container" else 0
    return {"cold_slot_s": cold, "second_slot_s": second, "restart_s": restart, "disk_running": running, "left": left}


def build_image(bundle: Path) -> tuple[str, str, str]:
    """Build the bundle's serving image as `mlrelease build` does; its pinned reference, tag and engine's name."""
    from deploy.engine import detect_engine
    from deploy.image.build import BuildParams, BuildTarget, build
    from mlrelease.core.modelcard import ModelCard

    engine = detect_engine()
    card = ModelCard.read(bundle)
    report = build(BuildTarget(bundle, card.name, "bench", card.sha256), BuildParams(), REPO, engine=engine)
    repository = str(report["image_ref"]).rpartition(":")[0]
    return f"{repository}@{report['image_digest']}", str(report["image_ref"]), engine.name


def median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=REPO / "models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_runtime.json")
    args = parser.parse_args(argv)
    image, ref, engine = build_image(args.bundle)
    rounds: dict[str, list[dict[str, Any]]] = {"process": [], "container": []}
    try:
        for _ in range(args.rounds):
            rounds["process"].append(one_round("process", args.bundle, None, args.replicas))
            rounds["container"].append(one_round("container", args.bundle, image, args.replicas))
    finally:
        from deploy.engine import detect_engine

        detect_engine().run("rmi", "-f", ref, check=False)
    summary = {
        runtime: {
            "cold_slot_s": median(rows, "cold_slot_s"),
            "second_slot_s": median(rows, "second_slot_s"),
            "restart_s": median(rows, "restart_s"),
            "disk_two_slots_mb": round(statistics.median(r["disk_running"] for r in rows) / 1e6, 1),
            "disk_left_after_stop_mb": round(max(r["left"] for r in rows) / 1e6, 1),
        }
        for runtime, rows in rounds.items()
    }
    proc = summary["process"]
    ratios = {k: round(v / proc[k], 2) for k, v in summary["container"].items() if k.endswith("_s") and proc[k]}
    report = {
        "engine": engine,
        "replicas": args.replicas,
        "summary": summary,
        "container_over_process": ratios,
        "not_measured": "docker and podman: neither answers on this machine" if engine == "buildah" else "",
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
