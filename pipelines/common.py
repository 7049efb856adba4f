"""Helpers shared by the training-side stages: reading splits as tensors, loading the checkpoint."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.model import TabularClassifier
from pipelines.schema import DataContract


@dataclass(frozen=True)
class Split:
    """Features as float32 and labels as class indices, in the contract's feature order."""

    x: np.ndarray
    y: np.ndarray


def read_split(path: Path, contract: DataContract) -> Split:
    """A prepared CSV as arrays; labels are mapped to their index in the contract's label list."""
    df = pd.read_csv(path)
    index = {str(label): i for i, label in enumerate(contract.target.labels)}
    y = df[contract.target.name].astype(str).map(index)
    if y.isna().any():
        unknown = sorted(set(df[contract.target.name].astype(str)) - set(index))
        raise ValueError(f"{path}: labels {unknown} are not in the schema's target.labels")
    x = df[contract.feature_names].to_numpy(dtype=np.float32, copy=True)
    return Split(x=x, y=y.to_numpy(dtype=np.int64, copy=True))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels on one thread."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def save_checkpoint(model: TabularClassifier, config: dict[str, Any], path: Path) -> None:
    """State dict plus the constructor arguments; loadable with weights_only=True (no arbitrary unpickling)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": config}, path)


def load_checkpoint(path: Path) -> TabularClassifier:
    """Rebuild the eager model from a checkpoint written by save_checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    cfg = payload["config"]
    model = TabularClassifier(cfg["n_features"], cfg["n_classes"], list(cfg["hidden"]), float(cfg["dropout"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def predict_proba(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Class probabilities of an eager or TorchScript model, without autograd."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    """Mean, p50, p95 and p99 of latency samples in ms, as the export report keeps them."""
    arr = np.array(samples_ms)
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_numeric(path: Path) -> dict[str, float]:
    """The numeric entries of a JSON metrics file (the confusion matrix and other lists are left out)."""
    return {k: float(v) for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))}
