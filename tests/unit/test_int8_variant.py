"""The INT8 variant: its params, its gates' judgement, its card entry and sha256 checks, and how serving loads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.serving.model import ModelLoadError, load_model
from deploy.serving.resolve import ResolvedBundle
from deploy.serving.responses import metadata_v1, metadata_v2
from mlrelease.core.modelcard import INT8, VARIANT_FILES, ModelCard, VariantArtifact, sha256_file
from mlrelease.core.params import ExportParams, ParamsError, load_params
from pipelines import quantize
from pipelines.common import predict_proba
from pipelines.model import TabularClassifier
from pipelines.register import int8_decision
from tests.serving_helpers import breast_cancer, make_bundle

REPO = Path(__file__).resolve().parents[2]
STRICT = ExportParams(int8_max_accuracy_drop=0.0, int8_max_auc_drop=0.0, int8_max_prob_diff=0.0)


@pytest.fixture(scope="module")
def eager() -> TabularClassifier:
    """A small MLP trained on the breast cancer data (in process, a fraction of a second)."""
    x, y, _ = breast_cancer()
    torch.manual_seed(0)
    mean, scale = torch.from_numpy(x.mean(0)), torch.from_numpy(x.std(0) + 1e-6)
    model = TabularClassifier(x.shape[1], 2, [16], 0.0, mean, scale)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.logits(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def int8_bundle(eager: TabularClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose card lists an INT8 variant, as the export stage writes it."""
    folder = make_bundle(tmp_path_factory.mktemp("int8") / "bundle", epochs=1)
    torch.jit.save(torch.jit.freeze(torch.jit.script(eager)), str(folder / "model.pt"))
    quantized, _ = quantize.quantize_int8(eager)
    path = folder / VARIANT_FILES[INT8]
    path.parent.mkdir()
    torch.jit.save(torch.jit.freeze(torch.jit.script(quantized)), str(path))
    card = ModelCard.read(folder)
    entry = VariantArtifact(
        artifact=VARIANT_FILES[INT8], sha256=sha256_file(path), size_bytes=path.stat().st_size, quantization="q"
    )
    card.model_copy(update={"sha256": sha256_file(folder / "model.pt"), "variants": {INT8: entry}}).write(folder)
    return folder


def test_int8_is_on_by_default_and_its_thresholds_fail_fast_on_a_typo(tmp_path: Path) -> None:
    from pipelines.compare import threshold_fields

    export = load_params(REPO / "params.yaml").export
    assert export.int8 is True and 0 < export.int8_max_accuracy_drop < 1 and 0 < export.int8_max_prob_diff < 1
    marks = threshold_fields()
    assert {marks[f"export.int8_max_{k}"][0] for k in ("accuracy_drop", "auc_drop", "prob_diff")} == {"up"}
    text = (REPO / "params.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(text.replace("int8_max_accuracy_drop:", "int8_max_acc_drop:"))
    with pytest.raises(ParamsError, match="int8_max_acc_drop"):
        load_params(tmp_path / "typo.yaml")
    (tmp_path / "neg.yaml").write_text(text.replace("int8_max_auc_drop: 0.01", "int8_max_auc_drop: -0.1"))
    with pytest.raises(ParamsError, match="int8_max_auc_drop"):
        load_params(tmp_path / "neg.yaml")


def test_the_quantized_model_is_close_to_fp32_but_never_identical(eager: TabularClassifier) -> None:
    """Default thresholds pass it; a probability-difference threshold of 0 always drops it, naming the gate."""
    x, y, _ = breast_cancer()
    quantized, layers = quantize.quantize_int8(eager)
    assert layers == 2
    fp32, int8 = predict_proba(eager, x), predict_proba(quantized, x)
    _, gates = quantize.agreement_gates(y, fp32, int8, layers, ExportParams())
    assert all(g.passed for g in gates) and quantize.dropped_reason(gates) is None
    metrics, strict = quantize.agreement_gates(y, fp32, int8, layers, STRICT)
    assert set(metrics) == {"fp32", "int8"} and metrics["fp32"]["accuracy"] > 0.9
    failed = {g.name for g in strict if not g.passed}
    assert "int8_max_prob_diff" in failed
    reason = quantize.dropped_reason(strict)
    assert reason is not None and "int8_max_prob_diff" in reason and "threshold <= 0.0" in reason


def test_drops_are_measured_against_fp32_on_the_same_labels() -> None:
    y = np.array([0, 1, 1, 0])
    fp32 = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    int8 = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.6, 0.4]])  # one row crosses the boundary
    cfg = ExportParams(int8_max_accuracy_drop=0.25, int8_max_auc_drop=1.0, int8_max_prob_diff=0.3)
    _, gates = quantize.agreement_gates(y, fp32, int8, 2, cfg)
    by_name = {g.name: g for g in gates}
    assert by_name["int8_accuracy_drop"].value == 0.25 and by_name["int8_accuracy_drop"].passed
    assert "fp32 1.000000, int8 0.750000" in by_name["int8_accuracy_drop"].detail
    assert by_name["int8_max_prob_diff"].value == 0.25 and by_name["int8_max_prob_diff"].passed  # 0.55 - 0.3
    tighter = cfg.model_copy(update={"int8_max_accuracy_drop": 0.24})
    assert not {g.name: g for g in quantize.agreement_gates(y, fp32, int8, 2, tighter)[1]}["int8_accuracy_drop"].passed
    nothing = quantize.agreement_gates(y, fp32, fp32, 0, ExportParams())[1]
    assert quantize.dropped_reason(nothing) == "gate(s) failed: int8_quantized_linear_layers = 0 (threshold >= 1)"


def test_latency_is_measured_for_both_models_at_each_batch(eager: TabularClassifier) -> None:
    x, _, _ = breast_cancer()
    quantized, _ = quantize.quantize_int8(eager)
    latency = quantize.side_by_side_latency({"fp32": eager, "int8": quantized}, x, warmup=1, runs=10)
    assert set(latency) == {"fp32", "int8"}
    for figures in latency.values():
        assert set(figures) == {"batch_1", "batch_32"}
        assert all(figures[b]["p99"] >= figures[b]["p50"] > 0 for b in figures)
    assert set(quantize.latency_ratios(latency)) == {"batch_1_p50", "batch_1_p99", "batch_32_p50", "batch_32_p99"}


def test_serving_loads_the_int8_artifact_checked_against_card_and_tag(int8_bundle: Path) -> None:
    card = ModelCard.read(int8_bundle)
    sha = card.variants[INT8].sha256
    model = load_model(int8_bundle, version="3", expected_sha256=sha, max_batch=8, runtime="auto", variant=INT8)
    assert (model.variant, model.artifact_sha256, model.sha256) == (INT8, sha, card.sha256)
    assert model.runtime == "torchscript"  # quantized ops have no numpy lowering
    x, _, _ = breast_cancer()
    expected = torch.jit.load(str(int8_bundle / VARIANT_FILES[INT8]))(torch.from_numpy(x[:5])).numpy()
    np.testing.assert_allclose(model.predict(x[:5]), expected, atol=1e-6)
    meta = json.loads(metadata_v1(model))
    assert (meta["variant"], meta["artifact_sha256"]) == (INT8, sha)
    assert json.loads(metadata_v2(model))["parameters"]["variant"] == INT8
    assert load_model(int8_bundle, version="3", max_batch=8).variant == "fp32"
    with pytest.raises(ModelLoadError, match="registry tag"):
        load_model(int8_bundle, version="3", expected_sha256="f" * 64, max_batch=8, variant=INT8)


def test_a_tampered_or_missing_int8_artifact_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(int8_bundle, tampered)
    path = tampered / VARIANT_FILES[INT8]
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match model card"):
        load_model(tampered, version="1", max_batch=8, variant=INT8)
    card = ModelCard.read(tampered)
    card.model_copy(update={"variants": {}}).write(tampered)
    with pytest.raises(ModelLoadError, match="refusing to serve variant int8 .* no INT8 artifact"):
        load_model(tampered, version="1", max_batch=8, variant=INT8)
    registry = ResolvedBundle(tampered, "4", "a" * 64, variant_sha256={})
    assert registry.expected("fp32") == "a" * 64
    with pytest.raises(ModelLoadError, match="version 4 has no int8 artifact in the registry"):
        registry.expected(INT8)
    assert ResolvedBundle(tampered, "local", None).expected(INT8) is None  # a folder: only its card vouches


def test_register_takes_int8_only_when_report_and_card_agree(int8_bundle: Path, tmp_path: Path) -> None:
    sha = ModelCard.read(int8_bundle).variants[INT8].sha256
    report = tmp_path / "export.json"
    report.write_text(json.dumps({"passed": True, INT8: {"passed": True, "sha256": sha}}))
    assert int8_decision(int8_bundle, report) is None
    report.write_text(json.dumps({"passed": True, INT8: {"passed": True, "sha256": "0" * 64}}))
    assert "different int8 artifacts" in str(int8_decision(int8_bundle, report))
    why = "gate(s) failed: int8_accuracy_drop = 0.01 (threshold <= 0.0)"
    report.write_text(json.dumps({"passed": True, INT8: {"passed": False, "reason": why}}))
    assert int8_decision(int8_bundle, report) == why
    report.write_text(json.dumps({"passed": True}))  # an export from before the variant existed
    assert "no passed int8 section" in str(int8_decision(int8_bundle, report))
