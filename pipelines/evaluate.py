"""Stage `evaluate`: test-split metrics, DVC plots, threshold gates, behavioural checks, champion/challenger.

A failed gate fails the stage (exit 1) and names the gate, the value and the threshold; the register stage
refuses to run on a failed gates report, so a model that fails here is never registered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from mlrelease.core.params import GateParams, Params, load_params, run_stage
from pipelines.common import Split, load_checkpoint, predict_proba, read_split, write_json
from pipelines.gates import Gate, at_least, gates_payload
from pipelines.schema import DataContract, load_contract

log = logging.getLogger(__name__)
EDGE_SCALE = 1000.0


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy, ROC AUC from probabilities (one-vs-rest macro for multiclass), F1, precision, recall."""
    pred = proba.argmax(axis=1)
    n_classes = proba.shape[1]
    average = "binary" if n_classes == 2 else "macro"
    auc = (
        skm.roc_auc_score(y, proba[:, 1])
        if n_classes == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(n_classes)))
    )
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "roc_auc": float(auc),
        "f1": float(skm.f1_score(y, pred, average=average, zero_division=0)),
        "precision": float(skm.precision_score(y, pred, average=average, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, average=average, zero_division=0)),
    }


def roc_points(y: np.ndarray, proba: np.ndarray) -> list[dict[str, float]]:
    """ROC curve points (micro-averaged one-vs-rest for multiclass) for `dvc plots`."""
    if proba.shape[1] == 2:
        fpr, tpr, thr = skm.roc_curve(y, proba[:, 1])
    else:
        onehot = label_binarize(y, classes=list(range(proba.shape[1])))
        fpr, tpr, thr = skm.roc_curve(onehot.ravel(), proba.ravel())
    points = zip(fpr, tpr, thr, strict=True)
    return [{"fpr": float(f), "tpr": float(t), "threshold": float(min(h, 1.0))} for f, t, h in points]


def confusion_rows(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> list[dict[str, str]]:
    """One row per test example (actual, predicted), the shape `dvc plots` uses for a confusion matrix."""
    pred = proba.argmax(axis=1)
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y, pred, strict=True)]


def edge_inputs(n_features: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs a served model must survive without NaN or Inf."""
    rng = np.random.default_rng(seed)
    return {
        "zeros": np.zeros((8, n_features), dtype=np.float32),
        "ones": np.ones((8, n_features), dtype=np.float32),
        "random": rng.normal(size=(8, n_features)).astype(np.float32),
    }


def behavioural_gates(model: torch.nn.Module, test: Split, gates: GateParams, seed: int) -> list[Gate]:
    """Output shape for each batch size; finite probabilities for edge and scaled inputs."""
    n_features = test.x.shape[1]
    results = []
    for size in gates.behavioural_batch_sizes:
        x = np.resize(test.x, (size, n_features))
        out = predict_proba(model, x)
        ok = out.shape[0] == size and np.allclose(out.sum(axis=1), 1.0, atol=1e-4)
        results.append(Gate(f"shape_batch_{size}", list(out.shape), f"[{size}, n_classes], rows sum to 1", bool(ok)))
    cases = edge_inputs(n_features, seed)
    cases["scaled_x1000"] = test.x[:8] * EDGE_SCALE
    for name, x in cases.items():
        finite = bool(np.isfinite(predict_proba(model, x)).all())
        results.append(Gate(f"finite_{name}", finite, True, finite))
    return results


def champion_gates(
    candidate: dict[str, Any], champion: dict[str, Any] | None, tolerance: float, note: str
) -> list[Gate]:
    """The candidate may trail production by at most ``tolerance`` on accuracy and AUC; no champion passes."""
    if champion is None:
        return [Gate("champion_challenger", "no production version", "-", True, note)]
    return [
        Gate(
            f"champion_{key}",
            round(candidate[key], 6),
            f">= {champion[key]:.6f} - {tolerance}",
            bool(candidate[key] >= champion[key] - tolerance),
            note,
        )
        for key in ("accuracy", "roc_auc")
    ]


def threshold_gates(m: dict[str, Any], gates: GateParams) -> list[Gate]:
    return [
        at_least("min_accuracy", m["accuracy"], gates.min_accuracy),
        at_least("min_roc_auc", m["roc_auc"], gates.min_roc_auc),
    ]


def champion_metrics(params: Params, contract: DataContract, test: Split) -> tuple[dict[str, Any] | None, str]:
    """Metrics of the version aliased `production` on the same test split, or None with the reason."""
    from mlrelease.core.modelcard import MODEL_FILE, ModelCard
    from registry.champion import production_bundle

    with production_bundle(params.model.name) as (bundle, why):
        if bundle is None:
            return None, why
        card = ModelCard.read(bundle)
        if card.feature_names != contract.feature_names:
            return None, (
                f"production version expects other features ({card.n_features}); not comparable, comparison skipped"
            )
        module = torch.jit.load(str(bundle / MODEL_FILE), map_location="cpu")
        scores = classification_metrics(test.y, predict_proba(module, test.x))
    return scores, f"compared with production ({card.sha256[:12]}) on the same test split"


def main(argv: list[str] | None = None) -> int:
    """DVC entry point: metrics and plots, then every gate; exit 1 naming each failed gate."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--gates", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    contract = load_contract(params.data.schema_path)
    test = read_split(args.splits / "test.csv", contract)
    model = load_checkpoint(args.checkpoint)
    proba = predict_proba(model, test.x)
    scores = classification_metrics(test.y, proba)
    matrix = skm.confusion_matrix(test.y, proba.argmax(axis=1), labels=list(range(proba.shape[1])))
    write_json(args.metrics, {**scores, "n_test": len(test.y), "confusion_matrix": matrix.tolist()})
    write_json(args.plots / "roc.json", {"roc": roc_points(test.y, proba)})
    write_json(args.plots / "confusion.json", {"confusion": confusion_rows(test.y, proba, contract.class_names)})
    try:
        champion, note = champion_metrics(params, contract, test)
    except RuntimeError as exc:
        sys.stderr.write(f"evaluate: champion/challenger gate could not run: {exc}\n")
        return 1
    gates = (
        threshold_gates(scores, params.gates)
        + behavioural_gates(model, test, params.gates, params.seed)
        + champion_gates(scores, champion, params.gates.champion_tolerance, note)
    )
    write_json(args.gates, gates_payload("evaluate", gates))
    for gate in gates:
        log.info("%s", gate.line())
    if not all(g.passed for g in gates):
        failed = [g.line() for g in gates if not g.passed]
        sys.stderr.write(
            "evaluate: gate(s) failed, the model will not be registered:\n"
            + "\n".join(failed)
            + "\nThe thresholds are `gates:` in params.yaml, the same for every model: improve this one (data, "
            "`model:` or `train:` params), then `dvc repro`.\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
