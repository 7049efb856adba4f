"""Training time against rows and batch size, on a generated table of 30 features (300,000 rows by default).

Measures the `train` stage's own loop (``pipelines.train.train_model``, one thread as the stage runs it): seconds per
epoch for each row count and batch size, the previous per-row DataLoader loop for comparison, and full trainings
(early stopping included) with the params.yaml defaults and any ``--full`` configurations. Writes
benchmarks/results/bench_training.json and prints a table. ``--parquet PATH`` also writes the generated table, to try
`dvc repro` on it (docs/report.md). Usage: .venv/bin/python benchmarks/bench_training.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from benchmarks import REPO, RESULTS
from mlrelease.core.params import Params, load_params
from pipelines.common import Split

ROWS = (30_000, 100_000, 300_000)
BATCH_SIZES = (32, 64, 128, 256, 512)
EPOCHS_TIMED = 2  # per point of the rows x batch size grid


def make_table(rows: int, features: int = 30, seed: int = 0) -> pd.DataFrame:
    """A binary classification table like a user's: informative, redundant and noise features, 3% flipped labels."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows,
        n_features=features,
        n_informative=12,
        n_redundant=6,
        flip_y=0.03,
        class_sep=0.8,
        random_state=seed,
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i:02d}" for i in range(features)])
    frame["label"] = y
    return frame


def splits(frame: pd.DataFrame, seed: int = 42) -> dict[str, Split]:
    """60/20/20 stratified train/val/test splits, as the prepare stage's defaults make them."""
    from sklearn.model_selection import train_test_split

    x, y = frame.drop(columns="label").to_numpy(np.float32), frame["label"].to_numpy(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return {"train": Split(x_train, y_train), "val": Split(x_val, y_val), "test": Split(x_test, y_test)}


def with_train(params: Params, **values: Any) -> Params:
    """``params`` with some ``train:`` values replaced."""
    return params.model_copy(update={"train": params.train.model_copy(update=values)})


def train(params: Params, data: dict[str, Split]) -> dict[str, Any]:
    """One full training: seconds, epochs run, best epoch, and test accuracy."""
    import torch

    from pipelines.train import train_model

    started = time.perf_counter()
    result = train_model(params, data["train"], data["val"], n_classes=2)
    seconds = time.perf_counter() - started
    with torch.inference_mode():
        predicted = result.model(torch.from_numpy(data["test"].x)).argmax(dim=1).numpy()
    return {
        "seconds": round(seconds, 1),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": round(seconds / len(result.history), 3),
        "test_accuracy": round(float((predicted == data["test"].y).mean()), 4),
    }


def legacy_epoch_seconds(params: Params, data: Split) -> float:
    """One epoch of the loop before this benchmark: a DataLoader indexing a TensorDataset row by row."""
    import torch
    from torch import nn

    from pipelines.common import seed_everything
    from pipelines.model import build_model
    from pipelines.train import standardization

    seed_everything(params.seed)
    model = build_model(params.model, data.x.shape[1], 2, *standardization(data.x))
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=params.train.batch_size, shuffle=True)
    optim = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for xb, yb in loader:
        optim.zero_grad()
        loss = loss_fn(model.logits(xb), yb)
        loss.backward()
        optim.step()
        loss.item()
    return time.perf_counter() - started


def epoch_grid(params: Params, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Seconds per epoch for each row count and batch size (the train split is 60% of the rows)."""
    points = []
    for rows in ROWS:
        data = splits(frame.head(rows))
        for batch in BATCH_SIZES:
            fixed = with_train(params, batch_size=batch, max_epochs=EPOCHS_TIMED, patience=EPOCHS_TIMED)
            measured = train(fixed, data)
            points.append({"rows": rows, "batch_size": batch, "seconds_per_epoch": measured["seconds_per_epoch"]})
            logging.info("grid: %d rows, batch %d: %.2f s/epoch", rows, batch, measured["seconds_per_epoch"])
    return points


def parse_config(text: str) -> dict[str, Any]:
    """``BATCH:LR:PATIENCE`` (``32:0.001:40``) as train values."""
    batch, lr, patience = text.split(":")
    return {"batch_size": int(batch), "lr": float(lr), "patience": int(patience)}


def table(result: dict[str, Any]) -> str:
    """The grid as markdown (one row per row count, one column per batch size), then the full trainings."""
    lines = []
    if result["grid"]:
        lines += ["| rows | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |"]
        lines.append("|---:|" + "---:|" * len(BATCH_SIZES))
        for rows in ROWS:
            cells = {p["batch_size"]: p["seconds_per_epoch"] for p in result["grid"] if p["rows"] == rows}
            lines.append(f"| {rows:,} | " + " | ".join(f"{cells[b]:.2f} s" for b in BATCH_SIZES) + " |")
        lines.append("")
    lines.append("| training | batch | lr | patience | epochs (best) | time | test accuracy |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for run in result["full"]:
        lines.append(
            f"| {run['name']} | {run['batch_size']} | {run['lr']:g} | {run['patience']} | {run['epochs']} "
            f"({run['best_epoch']}) | {run['seconds']} s | {run['test_accuracy']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure the grid and the full trainings; write the result file and print the tables."""
    parser = argparse.ArgumentParser(prog="bench_training", description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the full trainings")
    parser.add_argument("--full", action="append", default=[], help="also train fully with BATCH:LR:PATIENCE")
    parser.add_argument("--no-grid", action="store_true", help="skip the rows x batch size grid")
    parser.add_argument("--parquet", type=Path, help="also write the generated table here")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_training.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLRELEASE_PROGRESS", "log")
    params = load_params(REPO / "params.yaml")
    frame = make_table(max(args.rows, *ROWS))
    if args.parquet:
        frame.head(args.rows).to_parquet(args.parquet, index=False)
    data = splits(frame.head(args.rows))
    legacy = with_train(params, batch_size=32)
    result: dict[str, Any] = {
        "rows": args.rows,
        "features": 30,
        "legacy_dataloader_epoch_s_batch32": round(legacy_epoch_seconds(legacy, data["train"]), 2),
        "grid": [] if args.no_grid else epoch_grid(params, frame),
        "full": [],
    }
    configs = [("params.yaml defaults", {})] + [(f"--full {text}", parse_config(text)) for text in args.full]
    for name, values in configs:
        run_params = with_train(params, **values)
        run = {"name": name, **run_params.train.model_dump(include={"batch_size", "lr", "patience"})}
        result["full"].append({**run, **train(run_params, data)})
        logging.info("full: %s", result["full"][-1])
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(table(result) + f"\nwritten: {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
