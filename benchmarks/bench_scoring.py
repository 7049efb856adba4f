"""Batch scoring: rows per second of `mlrelease score` with the local engine and with Spark local[2], on the same
generated Parquet file, in one run (the same machine load for both).

Each run is timed end to end as a user sees it: the version's download and load, Spark's start (context, Python
workers importing torch and loading the model; the first Spark run also starts the JVM: reported apart as
``spark_local_2_cold``), the contract check, scoring and writing. Local and Spark runs are interleaved; a second
file of twice the rows gives each engine's marginal pace (its rows per second once the fixed costs are paid).
Both engines must agree (same rows scored and rejected). Needs a registered version: by default a throwaway copy
of the repository runs the pipeline first (about a minute); ``--home`` reuses a workspace that has one (e.g. the
repository after `make demo`). Writes benchmarks/results/bench_scoring.json.

Usage: .venv/bin/python benchmarks/bench_scoring.py [--rows 300000] [--home DIR] [--model models:/NAME@candidate]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import RESULTS

log = logging.getLogger("bench_scoring")


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """Breast-cancer rows sampled with replacement, a little noise, an ``id`` key, and one row in 10,000 broken."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(seed)
    frame = data.iloc[rng.integers(0, len(data), rows)].reset_index(drop=True)
    features = [c for c in frame.columns if c != "target"]
    frame[features] = frame[features] * rng.uniform(0.98, 1.02, size=(rows, len(features)))
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame.loc[::10_000, "mean radius"] = np.nan
    frame.to_parquet(path, index=False, row_group_size=100_000)


def registered_workspace(home: Path | None, scratch: Path) -> Path:
    """``home`` as given, or a throwaway copy of the repository in which the pipeline registered a version."""
    if home is not None:
        return home
    from tests.workspace import make_workspace

    ws = make_workspace(scratch / "ws")
    ws.dvc("repro", "register")
    return ws.root


def run_engine(engine: Literal["local", "spark"], model: str, source: Path, out: Path, home: Path) -> dict[str, float]:
    """One end-to-end scoring run; its rows, seconds and rows per second."""
    from contextlib import AbstractContextManager

    from mlrelease.core.progress import Progress, progress
    from mlrelease.core.settings import Settings
    from scoring.job import ScoreJob, score

    def quiet(label: str, total: int | None, unit: str) -> AbstractContextManager[Progress]:
        return progress(label, total, unit=unit, log=log, every_s=3600)

    job = ScoreJob(model, source, out / f"{engine}.parquet", engine=engine)
    start = time.perf_counter()
    result = score(job, Settings(home=home), quiet)
    seconds = time.perf_counter() - start
    return {
        "rows": result.rows,
        "scored": result.scored,
        "rejected": result.rejected,
        "seconds": round(seconds, 2),
        "rows_per_s": round(result.rows / seconds),
    }


def marginal(small: dict[str, Any], large: dict[str, Any]) -> int:
    """Rows per second of the rows a larger run adds: the pace once the fixed costs (start, load) are paid."""
    return round((large["rows"] - small["rows"]) / max(large["seconds"] - small["seconds"], 1e-3))


def measure(model: str, scratch: Path, home: Path, rows: int) -> dict[str, Any]:
    """Both engines interleaved on the same files: ``rows`` (twice for local, once cold and once warm for Spark)
    and twice as many rows. A first local run on 1,000 rows pays the imports beforehand."""
    tiny, small, large = scratch / "tiny.parquet", scratch / "rows.parquet", scratch / "rows2.parquet"
    for path, count in ((tiny, 1_000), (small, rows), (large, 2 * rows)):
        generate(path, count)
    run_engine("local", model, tiny, scratch, home)
    local = [run_engine("local", model, small, scratch, home)]
    spark_cold = run_engine("spark", model, small, scratch, home)
    local.append(run_engine("local", model, small, scratch, home))
    spark = run_engine("spark", model, small, scratch, home)
    local_large = run_engine("local", model, large, scratch, home)
    spark_large = run_engine("spark", model, large, scratch, home)
    best = min(local, key=lambda figures: figures["seconds"])
    return {
        "local": best,
        "spark_local_2": spark,
        "spark_local_2_cold": spark_cold,
        "local_2x_rows": local_large,
        "spark_local_2_2x_rows": spark_large,
        "marginal_rows_per_s": {"local": marginal(best, local_large), "spark_local_2": marginal(spark, spark_large)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_scoring", description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--home", type=Path, default=None, help="a workspace with a registered version")
    parser.add_argument("--model", default=None, help="default: models:/<model.name>@candidate")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_scoring.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mlrelease-bench-score-") as tmp:
        scratch = Path(tmp)
        home = registered_workspace(args.home, scratch)
        from mlrelease.core.params import load_params

        model = args.model or f"models:/{load_params(home / 'params.yaml').model.name}@candidate"
        figures = measure(model, scratch, home, args.rows)
    local, spark, cold = figures["local"], figures["spark_local_2"], figures["spark_local_2_cold"]
    runs = (spark, cold)
    same = all(local[k] == run[k] for run in runs for k in ("rows", "scored", "rejected"))
    same = same and figures["local_2x_rows"]["scored"] == figures["spark_local_2_2x_rows"]["scored"]
    result = {
        **figures,
        "local_over_spark": round(local["rows_per_s"] / spark["rows_per_s"], 2),
        "local_over_spark_cold": round(local["rows_per_s"] / cold["rows_per_s"], 2),
        "same_rows_scored_and_rejected": same,
        "load_average_1m_at_start": round(load, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
