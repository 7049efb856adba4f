"""The whole pipeline under `dvc repro` in a copy of the repository, then the registry it leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workspace import Workspace

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]
STAGES = ("prepare", "validate", "train", "evaluate", "export", "register")


def test_registered_candidate_carries_lineage(built_workspace: Workspace, registration) -> None:
    from registry.client import get_client

    assert registration["created"] is True and registration["version"] == 1
    client = get_client(built_workspace.settings())
    version = client.get_model_version_by_alias(registration["model_name"], "candidate")
    assert str(version.version) == "1"
    card = json.loads((built_workspace.root / "models" / "model_card.json").read_text())
    tags = version.tags
    assert tags["artifact_sha256"] == card["sha256"]
    assert len(tags["git_commit"]) >= 40
    assert tags["data_hash"].startswith("md5:")
    assert len(tags["params_hash"]) == 64
    assert float(tags["metric.accuracy"]) >= 0.95 and float(tags["metric.roc_auc"]) >= 0.98
    assert tags["param.model.kind"] == "mlp"
    int8 = card["variants"]["int8"]  # the INT8 variant passed its gates on the default data and went in too
    assert tags["artifact_sha256_int8"] == int8["sha256"] and tags["variants"] == "fp32,int8"
    assert registration["variants"]["int8"] == {"registered": True, "artifact_sha256": int8["sha256"]}
    assert tags["gates"] == "evaluate=passed,export=passed,int8=passed"


def test_reports_and_gates(built_workspace: Workspace) -> None:
    reports = built_workspace.root / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert {"accuracy", "roc_auc", "f1", "precision", "recall", "confusion_matrix"} <= set(metrics)
    for name in ("evaluate_gates.json", "export.json"):
        payload = json.loads((reports / name).read_text())
        assert payload["passed"] is True and payload["gates"]
    export = json.loads((reports / "export.json").read_text())
    assert export["method"] == "script"
    assert set(export["latency_ms"]["batch_1"]) == {"mean", "p50", "p95", "p99"}
    int8 = export["int8"]
    assert int8["passed"] is True and int8["reason"] is None and int8["artifact"] == "variants/model_int8.pt"
    names = {g["name"] for g in int8["gates"]}
    assert {"int8_accuracy_drop", "int8_roc_auc_drop", "int8_max_prob_diff", "int8_reload_fresh_process"} <= names
    assert {"int8_shape_batch_32", "int8_finite_scaled_x1000", "int8_latency_p95_ms_batch1"} <= names
    assert set(int8["latency_ms"]) == {"fp32", "int8"} and set(int8["latency_ms"]["int8"]) == {"batch_1", "batch_32"}
    assert 0 < int8["size_bytes"]["int8"] < int8["size_bytes"]["fp32"]
    assert json.loads((reports / "data_validation.json").read_text())["valid"] is True


def test_second_repro_skips_every_stage(built_workspace: Workspace) -> None:
    out = built_workspace.dvc("repro").stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    status = built_workspace.dvc("status", "dvc.yaml").stdout
    assert "up to date" in status.lower(), status


def test_metrics_and_plots_diff_against_a_commit(built_workspace: Workspace) -> None:
    ws = built_workspace
    diff = ws.dvc("metrics", "diff", "HEAD", "--json").stdout
    assert "reports/metrics.json" in diff
    ws.dvc("plots", "diff", "HEAD", "-o", str(ws.root / "plots-out"))
    assert (ws.root / "plots-out" / "index.html").is_file()


def test_registered_model_loads_without_unpickling(built_workspace: Workspace, registration, tmp_path) -> None:
    """The version is a models-from-code pyfunc: MLflow loads it by running code that calls torch.jit.load."""
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from mlrelease.core.modelcard import sha256_file
    from registry.client import configure_mlflow
    from registry.register import download_bundle

    configure_mlflow(built_workspace.settings())
    bundle = download_bundle(
        "models:/breast-cancer-classifier@candidate",
        "breast-cancer-classifier",
        tmp_path / "b",
        settings=built_workspace.settings(),
    )
    local = mlflow.artifacts.download_artifacts(artifact_uri=registration["model_uri"], dst_path=str(tmp_path / "m"))
    assert not list(Path(local).rglob("*.pkl")), "no pickle in the logged model"
    int8_card = json.loads((bundle / "model_card.json").read_text())["variants"]["int8"]
    assert sha256_file(bundle / "variants" / "model_int8.pt") == int8_card["sha256"]  # fetched and checked too
    model = mlflow.pyfunc.load_model(registration["model_uri"])
    card = json.loads((bundle / "model_card.json").read_text())
    frame = pd.DataFrame(np.full((2, 30), 10.0), columns=card["feature_names"])
    direct = torch.jit.load(str(bundle / "model.pt"))(torch.from_numpy(frame.to_numpy(np.float32, copy=True))).numpy()
    assert np.allclose(model.predict(frame), direct)


def test_same_artifact_is_not_registered_twice(registry_workspace: Workspace) -> None:
    ws = registry_workspace
    ws.dvc("repro", "--force", "--single-item", "register")
    again = json.loads((ws.root / "reports" / "registration.json").read_text())
    assert again["created"] is False and again["version"] == 1


def test_a_failing_int8_variant_is_dropped_and_the_fp32_release_still_registered(registry_workspace: Workspace) -> None:
    """A probability-difference threshold of 0 fails any real quantization: export still succeeds, register makes
    an FP32-only version (the one before carries INT8), and both say why the variant was dropped."""
    from registry.client import get_client

    ws = registry_workspace
    ws.set_params(export={"int8_max_accuracy_drop": 0.0, "int8_max_prob_diff": 0.0})
    ws.dvc("repro", "export", "register")
    export = json.loads((ws.root / "reports" / "export.json").read_text())
    assert export["passed"] is True and export["int8"]["passed"] is False
    assert "int8_max_prob_diff" in export["int8"]["reason"] and "threshold <= 0.0" in export["int8"]["reason"]
    assert list((ws.root / "models" / "variants").iterdir()) == []
    assert json.loads((ws.root / "models" / "model_card.json").read_text())["variants"] == {}
    registration = json.loads((ws.root / "reports" / "registration.json").read_text())
    assert registration["created"] is True and registration["version"] == 2
    assert registration["variants"]["int8"]["registered"] is False
    assert registration["variants"]["int8"]["reason"] == export["int8"]["reason"]
    version = get_client(ws.settings()).get_model_version_by_alias(registration["model_name"], "candidate")
    assert str(version.version) == "2" and "artifact_sha256_int8" not in version.tags
    assert version.tags["artifact_sha256"] == registration["variants"]["fp32"]["artifact_sha256"]
