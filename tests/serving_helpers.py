"""Helpers for serving and load-test tests: a real model bundle, a test split, servers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from mlrelease.core.net import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "breast-cancer-classifier"
ADMIN_TOKEN = "adm-" + "k3y-for-tests-0123456789abcdef"
API_KEY = "api-" + "k3y-for-tests-0123456789abcdef"


def breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target.astype(np.int64), [str(n) for n in data.feature_names]


def make_bundle(
    dest: Path, *, seed: int = 0, epochs: int = 60, name: str = MODEL_NAME, hidden: tuple[int, ...] = (16,)
) -> Path:
    """Train a small TabularClassifier on breast cancer, export it frozen, write card and reference stats."""
    import torch

    from mlrelease.core.modelcard import MODEL_FILE, ModelCard, Standardization, sha256_file
    from pipelines.model import TabularClassifier

    x, y, names = breast_cancer()
    torch.manual_seed(seed)
    mean, scale = torch.from_numpy(x.mean(0)), torch.from_numpy(x.std(0) + 1e-6)
    model = TabularClassifier(x.shape[1], 2, list(hidden), 0.0, mean, scale)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.logits(xt), yt).backward()
        opt.step()
    model.eval()
    dest.mkdir(parents=True, exist_ok=True)
    frozen = torch.jit.freeze(torch.jit.script(model))
    torch.jit.save(frozen, str(dest / MODEL_FILE))
    card = ModelCard(
        name=name,
        feature_names=names,
        input_shape=[-1, len(names)],
        classes=["malignant", "benign"],
        preprocessing=Standardization(mean=mean.tolist(), scale=scale.tolist()),
        sha256=sha256_file(dest / MODEL_FILE),
        torch_version=torch.__version__,
    )
    card.write(dest)
    write_reference(dest, x, names)
    return dest


def write_reference(dest: Path, x: np.ndarray, names: list[str], bins: int = 10) -> None:
    from mlrelease.core.modelcard import REFERENCE_FILE, FeatureReference, ReferenceStats

    features = {}
    for j, feature in enumerate(names):
        col = x[:, j].astype(np.float64)
        edges = np.quantile(col, np.linspace(0, 1, bins + 1))
        idx = np.searchsorted(edges[1:-1], col, side="right")
        fractions = np.bincount(idx, minlength=bins) / len(col)
        features[feature] = FeatureReference(
            edges=edges.tolist(),
            fractions=fractions.tolist(),
            mean=col.mean(),
            std=col.std(),
            min=col.min(),
            max=col.max(),
        )
    stats = ReferenceStats(n_rows=len(x), features=features)
    (dest / REFERENCE_FILE).write_text(stats.model_dump_json())


def write_test_csv(path: Path, target: str = "target", rows: int = 120) -> Path:
    """The feature columns plus the target column, like data/prepared/test.csv."""
    import pandas as pd

    x, y, names = breast_cancer()
    frame = pd.DataFrame(x[:rows], columns=names)
    frame[target] = y[:rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def server_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLRELEASE_")}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO)})
    env.update({f"MLRELEASE_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float = 120) -> dict[str, object]:
    """Poll /ready until 200; fail fast if the process exits or the model failed to load."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(f"{url}/ready", timeout=2)
            if response.status_code == 200:
                return dict(response.json())
            last = response.json()
            if isinstance(last, dict) and last.get("failed"):
                raise TimeoutError(f"{url} will not become ready: {last}")
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s: {last}")


@contextlib.contextmanager
def run_server(
    model_dir: Path | None, log_dir: Path, *, wait: bool = True, args: tuple[str, ...] = (), **settings: str
) -> Iterator[Server]:
    """Start ``python -m deploy.serving`` on a free loopback port; always stop it."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        source = ["--model-dir", str(model_dir)] if model_dir is not None else []
        command = [sys.executable, "-m", "deploy.serving", *source, "--host", "127.0.0.1", "--port", str(port), *args]
        process = subprocess.Popen(
            command, cwd=REPO, env=server_env(**settings), stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait:
            wait_ready(server.url, process)
        yield server
    finally:
        stop_process(process)


def shared_bundle(tmp_path_factory: Any, seed: int) -> Path:
    """A bundle built once per test run (shared by xdist workers through a file lock)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / f"serving-bundle-{seed}"
    with FileLock(str(shared / f"serving-bundle-{seed}.lock")):
        if not (folder / ".done").exists():
            make_bundle(folder, seed=seed, hidden=(16,) if seed == 0 else (8,))
            (folder / ".done").write_text("ok")
    return folder
