"""The INT8 variant of the exported model: dynamic quantization of the linear layers, and the variant's own gates.

``torch.ao.quantization.quantize_dynamic`` stores every ``nn.Linear`` weight as INT8 and quantizes activations on
the fly (both model kinds, ``mlp`` and ``logreg``, are linear layers over the baked-in standardization). The export
stage scripts and saves the result beside model.pt, then judges it here against the FP32 module on the test split:
accuracy and ROC AUC within ``export.int8_max_accuracy_drop`` / ``int8_max_auc_drop``, the largest probability
difference within ``int8_max_prob_diff``, the behavioural checks, a fresh-process reload and latency measured beside
FP32 in the same run. A variant that fails is reported with the reason and not registered; FP32 goes on without it.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from mlrelease.core.modelcard import FP32, INT8
from mlrelease.core.params import ExportParams
from pipelines.common import latency_summary
from pipelines.evaluate import classification_metrics
from pipelines.gates import Gate, at_least, at_most

QUANTIZATION = "dynamic INT8 (torch.ao.quantization.quantize_dynamic: qint8 weights of every nn.Linear)"
LATENCY_BATCHES = (1, 32)
_TORCH_DEPRECATIONS = (  # torch 2.10+ points eager quantization at torchao; the API still works in this pinned torch
    (r".*torch\.ao\.quantization is deprecated.*", DeprecationWarning),
    (r".*quantized tensor creation functions.*deprecated.*", UserWarning),
)


def quantize_int8(eager: nn.Module) -> tuple[nn.Module, int]:
    """A copy of the eager model with every nn.Linear dynamically quantized to INT8; and how many were."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(eager).eval()
    with warnings.catch_warnings():
        for message, category in _TORCH_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    layers = sum(isinstance(module, DynamicLinear) for module in quantized.modules())
    return quantized, layers


def prefixed(gates: list[Gate]) -> list[Gate]:
    """The same gates named as the variant's (``int8_...``), so one report can hold FP32's and INT8's."""
    return [replace(gate, name=f"{INT8}_{gate.name}") for gate in gates]


def agreement_gates(
    y: np.ndarray, fp32_proba: np.ndarray, int8_proba: np.ndarray, layers: int, cfg: ExportParams
) -> tuple[dict[str, dict[str, float]], list[Gate]]:
    """Test-split metrics of both modules, and the gates: something was quantized, accuracy and AUC drops, and the
    largest probability difference (which any real quantization makes above 0, so a threshold of 0 always fails)."""
    metrics = {FP32: classification_metrics(y, fp32_proba), INT8: classification_metrics(y, int8_proba)}
    gates = [at_least(f"{INT8}_quantized_linear_layers", layers, 1)]
    for key, limit in (("accuracy", cfg.int8_max_accuracy_drop), ("roc_auc", cfg.int8_max_auc_drop)):
        gate = at_most(f"{INT8}_{key}_drop", metrics[FP32][key] - metrics[INT8][key], limit)
        gates.append(replace(gate, detail=f"fp32 {metrics[FP32][key]:.6f}, int8 {metrics[INT8][key]:.6f}"))
    diff = float(np.abs(fp32_proba - int8_proba).max())
    gates.append(at_most(f"{INT8}_max_prob_diff", diff, cfg.int8_max_prob_diff))
    return metrics, gates


def side_by_side_latency(
    models: dict[str, nn.Module], x: np.ndarray, warmup: int, runs: int
) -> dict[str, dict[str, dict[str, float]]]:
    """ms per forward pass of each model at batch 1 and 32, runs interleaved (one of each in turn, the order
    alternating) so that every model meets the same stretch of the machine's noise."""
    names = list(models)
    latency: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    with torch.inference_mode():
        for size in LATENCY_BATCHES:
            batch = torch.from_numpy(np.ascontiguousarray(np.resize(x, (size, x.shape[1])), dtype=np.float32))
            samples: dict[str, list[float]] = {name: [] for name in names}
            for i in range(warmup + runs):
                for name in names if i % 2 == 0 else reversed(names):
                    start = time.perf_counter()
                    models[name](batch)
                    if i >= warmup:
                        samples[name].append((time.perf_counter() - start) * 1000.0)
            for name in names:
                latency[name][f"batch_{size}"] = latency_summary(samples[name])
    return latency


def latency_gates(int8_latency: dict[str, dict[str, float]], cfg: ExportParams) -> list[Gate]:
    """The INT8 module meets the same batch-1 latency limits as FP32."""
    return [
        at_most(f"{INT8}_latency_mean_ms_batch1", int8_latency["batch_1"]["mean"], cfg.max_mean_ms_batch1),
        at_most(f"{INT8}_latency_p95_ms_batch1", int8_latency["batch_1"]["p95"], cfg.max_p95_ms_batch1),
    ]


def latency_ratios(latency: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """INT8 over FP32 at each batch size and figure (below 1: INT8 is faster)."""
    return {
        f"{batch}_{figure}": round(latency[INT8][batch][figure] / latency[FP32][batch][figure], 4)
        for batch in latency[INT8]
        for figure in ("p50", "p99")
        if latency[FP32][batch][figure] > 0
    }


def dropped_reason(gates: list[Gate]) -> str | None:
    """None when every gate passed; else one line naming each failed gate with its value and threshold."""
    failed = [gate for gate in gates if not gate.passed]
    if not failed:
        return None
    return "gate(s) failed: " + "; ".join(f"{g.name} = {g.value} (threshold {g.threshold})" for g in failed)


def skipped_section(reason: str, enabled: bool) -> dict[str, Any]:
    """The report's ``int8`` section when the variant was not built (off, or FP32 failed first)."""
    return {"enabled": enabled, "passed": False, "reason": reason, "gates": []}
