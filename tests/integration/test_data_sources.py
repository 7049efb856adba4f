"""Bring-your-own data runs the whole pipeline with no code change; broken data never registers a model (the
prepare stage's report on each broken file: tests/unit/test_prepare_broken_sources.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from tests.bad_data import CASES
from tests.workspace import Workspace, make_workspace

pytestmark = pytest.mark.integration


def _no_registered_model(ws: Workspace, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    from registry.client import get_client

    if not (ws.root / "mlruns" / "mlflow.db").exists():
        return True
    try:
        return not get_client(ws.settings()).search_model_versions(f"name='{name}'")
    except MlflowException:
        return True


def test_wine_csv_with_its_own_schema_runs_end_to_end(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "wine")
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    (ws.root / "datasets" / "wine.csv").write_text(frame.to_csv(index=False))
    ws.run(
        sys.executable,
        "-m",
        "mlrelease.cli",
        "infer-schema",
        "datasets/wine.csv",
        "--target",
        "cultivar",
        "--out",
        "schemas/wine.yaml",
    )
    ws.set_params(
        data={"source": "datasets/wine.csv", "target": "cultivar", "schema": "schemas/wine.yaml"},
        model={"name": "wine-classifier", "hidden": [32]},
        gates={"min_accuracy": 0.85, "min_roc_auc": 0.9},
        # the load-test stage runs, briefly (its gate's own limits: tests/integration/test_loadtest.py)
        loadtest={"users": 4, "spawn_rate": 4, "duration_s": 3, "slo": {"min_rps": 5, "p95_ms": 1000, "p99_ms": 2000}},
    )
    ws.dvc("repro")
    card = json.loads((ws.root / "models" / "model_card.json").read_text())
    assert card["classes"] == ["0", "1", "2"] and len(card["feature_names"]) == 13
    registration = json.loads((ws.root / "reports" / "registration.json").read_text())
    assert registration["model_name"] == "wine-classifier" and "candidate" in registration["aliases"]


def test_broken_data_under_dvc_registers_nothing(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "bad")
    case = next(c for c in CASES if c.name == "unknown_label")
    case.make(ws.root / "datasets" / "bad.csv")
    ws.set_params(data={"source": "datasets/bad.csv"})
    proc = ws.dvc("repro", check=False)
    assert proc.returncode != 0
    assert "target" in proc.stderr and "isin" in proc.stderr
    assert not (ws.root / "reports" / "registration.json").exists()
    assert _no_registered_model(ws, "breast-cancer-classifier")


def test_failed_accuracy_gate_registers_nothing(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "gate")
    ws.set_params(train={"max_epochs": 1, "lr": 1.0e-6}, gates={"min_accuracy": 0.99, "min_roc_auc": 0.999})
    proc = ws.dvc("repro", check=False)
    assert proc.returncode != 0
    assert "min_accuracy" in proc.stderr and "threshold" in proc.stderr
    assert not (ws.root / "models" / "model.pt").exists()
    assert _no_registered_model(ws, "breast-cancer-classifier")
