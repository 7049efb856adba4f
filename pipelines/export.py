"""Stage `export`: TorchScript (script, else trace with a warning), frozen for inference, then proven.

Proof: parity with the eager model on the whole test split and edge inputs, a reload in a fresh process with
`torch.jit.load`, and CPU latency gates at batch 1. Writes the bundle: model.pt, model_card.json and the
reference statistics, per the contract in mlrelease/core/modelcard.py.
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

from mlrelease.core.modelcard import CARD_FILE, MODEL_FILE, REFERENCE_FILE, ModelCard, Standardization, sha256_file
from mlrelease.core.params import ExportParams, load_params, run_stage
from pipelines.common import load_checkpoint, predict_proba, read_numeric, read_split, write_json
from pipelines.evaluate import EDGE_SCALE, edge_inputs
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
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
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


def main(argv: list[str] | None = None) -> int:
    """DVC entry point: export, prove, and write the bundle; exit 1 naming each failed gate."""
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
    contract = load_contract(params.data.schema_path)
    test = read_split(args.splits / "test.csv", contract)
    eager = load_checkpoint(args.checkpoint)
    scripted, method = to_torchscript(eager, torch.from_numpy(test.x[:4]))
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / MODEL_FILE
    save_reproducible(scripted, model_path)
    loaded = torch.jit.load(str(model_path), map_location="cpu")
    gates = parity_gates(eager, loaded, parity_inputs(test.x, params.seed), params.export.parity_atol)
    gates.append(reload_gate(model_path, test.x, predict_proba(eager, test.x), params.export.parity_atol))
    latency, lat_gates = latency_gates(loaded, test.x, params.export)
    gates += lat_gates
    distribution = {name: figures.pop("distribution") for name, figures in latency.items()}  # lists: no DVC metric
    report = {"latency_ms": latency, "latency_distribution_ms": distribution, "method": method}
    write_json(args.report, {**gates_payload("export", gates), **report})
    for gate in gates:
        log.info("%s", gate.line())
    if not all(g.passed for g in gates):
        model_path.unlink(missing_ok=True)
        failed = "\n".join(g.line() for g in gates if not g.passed)
        sys.stderr.write(f"export: gate(s) failed, no bundle written:\n{failed}\n")
        return 1
    shutil.copyfile(args.reference, args.out / REFERENCE_FILE)
    metrics = read_numeric(args.metrics)
    card = ModelCard(
        name=params.model.name,
        feature_names=contract.feature_names,
        input_shape=[-1, len(contract.features)],
        classes=contract.class_names,
        sha256=sha256_file(model_path),
        torch_version=torch.__version__,
        preprocessing=Standardization(mean=eager.mean.tolist(), scale=eager.scale.tolist()),  # type: ignore[operator]
        export_method=method,
        metrics=metrics,
        latency_ms=latency,
    )
    card.write(args.out)
    log.info("export: %s (%s) sha256=%s", model_path, CARD_FILE, card.sha256)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("export", main))
