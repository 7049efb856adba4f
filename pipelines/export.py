"""Stage `export`: TorchScript (script, else trace with a warning), frozen for inference, then proven.

Proof: parity with the eager model on the whole test split and edge inputs, a reload in a fresh process with
`torch.jit.load`, and CPU latency gates at batch 1. Writes the bundle: model.pt, model_card.json and the
reference statistics, per the contract in mlrelease/core/modelcard.py. With ``export.int8`` it also writes
variants/model_int8.pt, the dynamically quantized module, when that passes its own gates (pipelines/quantize.py);
the stage succeeds whenever FP32 passes, and the report's ``int8`` section says why a variant was dropped.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pickletools
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrelease.core.modelcard import (
    CARD_FILE,
    FP32,
    INT8,
    MODEL_FILE,
    REFERENCE_FILE,
    VARIANT_FILES,
    VARIANTS_DIR,
    ModelCard,
    Standardization,
    VariantArtifact,
    sha256_file,
)
from mlrelease.core.params import ExportParams, Params, load_params, run_stage
from pipelines import quantize
from pipelines.common import (
    Split,
    latency_summary,
    load_checkpoint,
    predict_proba,
    read_numeric,
    read_split,
    write_json,
)
from pipelines.evaluate import EDGE_SCALE, behavioural_gates, edge_inputs
from pipelines.gates import Gate, at_most, gates_payload
from pipelines.schema import load_contract

log = logging.getLogger(__name__)

_RELOAD_SNIPPET = """
import sys, numpy as np, torch
torch.set_num_threads(1)
m = torch.jit.load(sys.argv[1], map_location="cpu")
x = torch.from_numpy(np.load(sys.argv[2]))
with torch.inference_mode():
    np.save(sys.argv[3], m(x).numpy())
"""


def to_torchscript(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """Script the model (trace as a fallback, with a warning) and freeze it for inference."""
    model = model.eval()
    try:
        scripted = torch.jit.script(model)
        method = "script"
    except Exception as exc:  # torch raises many types for unscriptable code
        warnings.warn(f"torch.jit.script failed ({exc}); falling back to torch.jit.trace", stacklevel=2)
        scripted = torch.jit.trace(model, example)
        method = "trace"
    return torch.jit.freeze(scripted), method


_STRING_OPS = {"SHORT_BINUNICODE": (b"\x8c", "<B"), "BINUNICODE": (b"X", "<I"), "BINUNICODE8": (b"\x8d", "<Q")}


def relative_source_paths(debug_pkl: bytes, roots: list[str]) -> tuple[bytes, list[str]]:
    """A TorchScript ``.debug_pkl`` with each source file under one of ``roots`` named relative to it (POSIX
    separators), and the absolute paths left as they were.

    The debug records name every file the scripted code came from by its absolute path, so the same model exported
    from two checkouts had two sha256s. Rewrites the pickle opcode by opcode (nothing is unpickled): only the
    length-prefixed strings change, each keeping its opcode, and memo indices do not depend on byte offsets.
    """
    bases = sorted({root.rstrip("/\\") + os.sep for root in roots}, key=len, reverse=True)  # the deepest first
    ops = list(pickletools.genops(debug_pkl))
    ends = [pos for _, _, pos in ops[1:]] + [len(debug_pkl)]
    out, left = [], []
    for (op, arg, pos), end in zip(ops, ends, strict=True):
        if op.name == "FRAME":  # (protocol 4) frames are optional, and their sizes would no longer hold
            continue
        chunk = debug_pkl[pos:end]
        if op.name in _STRING_OPS and isinstance(arg, str) and os.path.isabs(arg) and arg.endswith(".py"):
            base = next((b for b in bases if arg.startswith(b)), None)
            if base is None:
                left.append(arg)
            else:
                code, size = _STRING_OPS[op.name]
                text = Path(os.path.relpath(arg, base)).as_posix().encode()
                chunk = code + struct.pack(size, len(text)) + text
        out.append(chunk)
    return b"".join(out), left


def source_roots() -> list[str]:
    """Where scripted source comes from: this checkout and the installed packages (torch's own modules), each as
    given and with links resolved (torch records the path Python imported the file by)."""
    places = [Path(__file__).parent.parent, *(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))]
    return sorted({form for place in places for form in (os.path.abspath(place), os.path.realpath(place))})


def save_reproducible(module: torch.jit.ScriptModule, path: Path, roots: list[str] | None = None) -> None:
    """``torch.jit.save``, with the same bytes from any checkout: source paths in the debug records are made
    relative, then the module is reloaded and saved by torch, which writes a serialization id of those bytes."""
    roots = source_roots() if roots is None else roots
    raw = io.BytesIO()
    torch.jit.save(module, raw)
    fixed = io.BytesIO()
    with zipfile.ZipFile(raw) as zin, zipfile.ZipFile(fixed, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".debug_pkl"):
                data, left = relative_source_paths(data, roots)
                for source in left:  # the export still works; it just has bytes that depend on where this ran
                    log.warning("export: %s is outside the checkout and site-packages; its path stays absolute", source)
            zout.writestr(info, data)
    fixed.seek(0)
    torch.jit.save(torch.jit.load(fixed, map_location="cpu"), str(path))


def parity_inputs(test_x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The whole test split plus the edge inputs the evaluate stage uses."""
    cases = {"test_split": test_x, **edge_inputs(test_x.shape[1], seed)}
    cases["scaled_x1000"] = test_x[:8] * EDGE_SCALE
    return cases


def parity_gates(
    eager: torch.nn.Module, scripted: torch.nn.Module, cases: dict[str, np.ndarray], atol: float
) -> list[Gate]:
    """Max absolute difference of probabilities, eager vs TorchScript, per input set."""
    gates = []
    for name, x in cases.items():
        diff = float(np.abs(predict_proba(eager, x) - predict_proba(scripted, x)).max())
        gates.append(at_most(f"parity_{name}", diff, atol))
    return gates


def reload_gate(model_path: Path, x: np.ndarray, expected: np.ndarray, atol: float) -> Gate:
    """Load the saved file with torch.jit.load in a fresh interpreter and compare its output."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(inp, x)
        proc = subprocess.run(
            [sys.executable, "-c", _RELOAD_SNIPPET, str(model_path), str(inp), str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            return Gate("reload_fresh_process", "failed", "loads and predicts", False, proc.stderr[-500:])
        diff = float(np.abs(np.load(out) - expected).max())
    return Gate("reload_fresh_process", round(diff, 9), f"<= {atol}", bool(diff <= atol))


QUANTILES = tuple(range(0, 101, 5))  # the latency distribution kept in the report: every 5th percentile


def measure_latency(
    model: torch.nn.Module, x: np.ndarray, warmup: int, runs: int, on_run: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Wall-clock latency of one forward pass in ms: mean, p50, p95, p99, and the ``distribution`` ([percentile, ms]
    at every 5th percentile, which the release report plots). ``on_run`` is called after each timed run, outside
    its timing."""
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(tensor)
        for _ in range(runs):
            start = time.perf_counter()
            model(tensor)
            samples.append((time.perf_counter() - start) * 1000.0)
            if on_run is not None:
                on_run()
    arr = np.array(samples)
    return {
        **latency_summary(samples),
        "distribution": [[q, round(float(np.percentile(arr, q)), 6)] for q in QUANTILES],
    }


def latency_gates(model: torch.nn.Module, test_x: np.ndarray, cfg: ExportParams) -> tuple[dict[str, Any], list[Gate]]:
    """Latency at batch 1 and 32 (progress shown: a bar on a terminal, else a log line every few seconds), and the
    batch-1 gates."""
    from mlrelease.core.progress import progress  # shows progress only: no dependency of the stage's result

    torch.set_num_threads(1)
    sizes = (1, 32)
    latency: dict[str, Any] = {}
    with progress("export latency", total=len(sizes) * cfg.latency_runs, unit="runs", log=log) as bar:
        for n in sizes:
            batch = np.resize(test_x, (n, test_x.shape[1]))
            latency[f"batch_{n}"] = measure_latency(
                model, batch, cfg.latency_warmup, cfg.latency_runs, partial(bar.update, advance=1, batch=n)
            )
    gates = [
        at_most("latency_mean_ms_batch1", latency["batch_1"]["mean"], cfg.max_mean_ms_batch1),
        at_most("latency_p95_ms_batch1", latency["batch_1"]["p95"], cfg.max_p95_ms_batch1),
    ]
    return latency, gates


def int8_variant(
    eager: torch.nn.Module, fp32: torch.nn.Module, test: Split, params: Params, out: Path
) -> tuple[dict[str, Any], VariantArtifact | None]:
    """Quantize, script, save and gate the INT8 variant: its report section, and its card entry when it passed
    (its file is removed otherwise). A variant that cannot even be built is dropped the same way, never raised."""
    cfg = params.export
    path = out / VARIANT_FILES[INT8]
    try:
        quantized, layers = quantize.quantize_int8(eager)
        scripted, method = to_torchscript(quantized, torch.from_numpy(test.x[:4]))
        save_reproducible(scripted, path)
        int8 = torch.jit.load(str(path), map_location="cpu")
        int8_proba = predict_proba(int8, test.x)
    except Exception as exc:  # quantization and scripting raise many types; FP32 must not depend on them
        path.unlink(missing_ok=True)
        log.warning("export: INT8 variant could not be built: %s", exc)
        return quantize.skipped_section(f"could not be built: {type(exc).__name__}: {exc}", True), None
    metrics, gates = quantize.agreement_gates(test.y, predict_proba(fp32, test.x), int8_proba, layers, cfg)
    gates += quantize.prefixed(behavioural_gates(int8, test, params.gates, params.seed))
    gates += quantize.prefixed([reload_gate(path, test.x, int8_proba, cfg.parity_atol)])
    latency = quantize.side_by_side_latency({FP32: fp32, INT8: int8}, test.x, cfg.latency_warmup, cfg.latency_runs)
    gates += quantize.latency_gates(latency[INT8], cfg)
    reason = quantize.dropped_reason(gates)
    sizes = {FP32: (out / MODEL_FILE).stat().st_size, INT8: path.stat().st_size}
    sha = sha256_file(path)
    section = {
        **gates_payload(f"export.{INT8}", gates),
        "enabled": True,
        "reason": reason,
        "artifact": None if reason else VARIANT_FILES[INT8],
        "sha256": None if reason else sha,
        "method": method,
        "quantization": quantize.QUANTIZATION,
        "metrics": {name: {k: round(v, 6) for k, v in figures.items()} for name, figures in metrics.items()},
        "latency_ms": latency,
        "latency_ratio_int8_to_fp32": quantize.latency_ratios(latency),
        "size_bytes": sizes,
    }
    if reason:
        path.unlink(missing_ok=True)
        return section, None
    entry = VariantArtifact(
        artifact=VARIANT_FILES[INT8],
        sha256=sha,
        size_bytes=sizes[INT8],
        quantization=quantize.QUANTIZATION,
        metrics=metrics[INT8],
        latency_ms=latency[INT8],
    )
    return section, entry


def fp32_gates(
    eager: torch.nn.Module, test: Split, params: Params, model_path: Path
) -> tuple[torch.jit.ScriptModule, list[Gate], dict[str, Any]]:
    """The saved FP32 module reloaded, its gates (parity, fresh-process reload, latency), and the report's figures."""
    loaded = torch.jit.load(str(model_path), map_location="cpu")
    gates = parity_gates(eager, loaded, parity_inputs(test.x, params.seed), params.export.parity_atol)
    gates.append(reload_gate(model_path, test.x, predict_proba(eager, test.x), params.export.parity_atol))
    latency, lat_gates = latency_gates(loaded, test.x, params.export)
    distribution = {name: figures.pop("distribution") for name, figures in latency.items()}  # lists: no DVC metric
    return loaded, gates + lat_gates, {"latency_ms": latency, "latency_distribution_ms": distribution}


def write_card(
    params: Params, eager: torch.nn.Module, out: Path, method: str, figures: dict[str, Any], **extra: Any
) -> ModelCard:
    """The bundle's model card, from the contract, the eager model's standardization and the export's figures."""
    contract = load_contract(params.data.schema_path)
    card = ModelCard(
        name=params.model.name,
        feature_names=contract.feature_names,
        input_shape=[-1, len(contract.features)],
        classes=contract.class_names,
        sha256=sha256_file(out / MODEL_FILE),
        torch_version=torch.__version__,
        preprocessing=Standardization(mean=eager.mean.tolist(), scale=eager.scale.tolist()),  # type: ignore[operator]
        export_method=method,
        latency_ms=figures["latency_ms"],
        **extra,
    )
    card.write(out)
    return card


def main(argv: list[str] | None = None) -> int:
    """DVC entry point: export, prove, and write the bundle; exit 1 naming each failed FP32 gate (a failed INT8
    variant is reported and dropped, and the stage still succeeds)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    test = read_split(args.splits / "test.csv", load_contract(params.data.schema_path))
    eager = load_checkpoint(args.checkpoint)
    scripted, method = to_torchscript(eager, torch.from_numpy(test.x[:4]))
    shutil.rmtree(args.out / VARIANTS_DIR, ignore_errors=True)  # a variant is there only if it passed this run
    (args.out / VARIANTS_DIR).mkdir(parents=True)
    model_path = args.out / MODEL_FILE
    save_reproducible(scripted, model_path)
    loaded, gates, figures = fp32_gates(eager, test, params, model_path)
    for gate in gates:
        log.info("%s", gate.line())
    if not all(g.passed for g in gates):
        int8_off = quantize.skipped_section("not built: the FP32 export failed its gates", params.export.int8)
        write_json(args.report, {**gates_payload("export", gates), **figures, "method": method, INT8: int8_off})
        model_path.unlink(missing_ok=True)
        failed = "\n".join(g.line() for g in gates if not g.passed)
        sys.stderr.write(f"export: gate(s) failed, no bundle written:\n{failed}\n")
        return 1
    int8, entry = (
        int8_variant(eager, loaded, test, params, args.out)
        if params.export.int8
        else (quantize.skipped_section("export.int8 is false in params.yaml", False), None)
    )
    write_json(args.report, {**gates_payload("export", gates), **figures, "method": method, INT8: int8})
    for gate in (Gate(**g) for g in int8["gates"]):
        log.info("%s", gate.line())
    if int8.get("reason"):
        log.warning("export: the INT8 variant is dropped (it will not be registered): %s", int8["reason"])
    shutil.copyfile(args.reference, args.out / REFERENCE_FILE)
    variants = {INT8: entry} if entry is not None else {}
    card = write_card(params, eager, args.out, method, figures, metrics=read_numeric(args.metrics), variants=variants)
    log.info("export: %s (%s) sha256=%s; variants: %s", model_path, CARD_FILE, card.sha256, sorted(variants) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("export", main))
