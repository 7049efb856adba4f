"""INT8 vs FP32 side by side in one run: the same bundle's two artifacts, each served by its own server.

Per variant: test-split accuracy and ROC AUC of the module; its artifact size; the module's own latency in process
(batch 1 and 32, runs interleaved, one thread); then over HTTP, both servers up at once on CPU 0 and wrk on CPU 1,
for request bodies of 1 and 32 rows: req/s at saturation (closed loop, the median of interleaved rounds) and
p50/p99 paced at half of the slower variant's peak (the same offered load for both, interleaved rounds, the median
kept); and the resident memory of each server process. Every server is asked which variant answers before it is
measured (``variant`` in GET /v1/models/NAME).
Writes benchmarks/results/bench_int8.json and a markdown table next to it; docs/benchmarks.md has the figures.
Run: ``.venv/bin/python benchmarks/bench_int8.py --model-dir models --test-csv data/prepared/test.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import REPO, RESULTS
from benchmarks.serving.config import CONNECTIONS, SERVER_CPU, base_env
from benchmarks.serving.probes import rss_mb
from benchmarks.serving.servers import Candidate, started
from benchmarks.serving.wrk import wrk

log = logging.getLogger("benchmarks.bench_int8")
VARIANTS = ("fp32", "int8")
BATCHES = (1, 32)


def offline(model_dir: Path, test_csv: Path, params: Path) -> tuple[dict[str, dict[str, Any]], Any]:
    """Accuracy, ROC AUC, artifact size and in-process latency of each variant's module; and the test features."""
    import torch

    from mlrelease.core.modelcard import ModelCard
    from mlrelease.core.params import load_params
    from pipelines.common import predict_proba, read_split
    from pipelines.evaluate import classification_metrics
    from pipelines.quantize import side_by_side_latency
    from pipelines.schema import load_contract

    card = ModelCard.read(model_dir)
    test = read_split(test_csv, load_contract(REPO / load_params(params).data.schema_path))
    torch.set_num_threads(1)
    modules = {v: torch.jit.load(str(model_dir / card.artifact_of(v)[0]), map_location="cpu") for v in VARIANTS}
    latency = side_by_side_latency(modules, test.x, warmup=200, runs=3000)
    figures = {}
    for variant, module in modules.items():
        scores = classification_metrics(test.y, predict_proba(module, test.x))
        artifact, sha = card.artifact_of(variant)
        figures[variant] = {
            "accuracy": scores["accuracy"],
            "roc_auc": scores["roc_auc"],
            "artifact_bytes": (model_dir / artifact).stat().st_size,
            "artifact_sha256": sha,
            "module_latency_ms": latency[variant],
        }
    return figures, test.x


def servers(model_dir: Path, name: str) -> dict[str, Candidate]:
    """Our server on the bundle, once per variant (MLRELEASE_MODEL_VARIANT)."""
    py = sys.executable
    path = f"/v1/models/{name}:predict"
    return {
        variant: Candidate(
            variant,
            f"mlrelease server, MLRELEASE_MODEL_VARIANT={variant}",
            path,
            b"",
            lambda p: [py, "-m", "deploy.serving", "--model-dir", str(model_dir), "--port", str(p)],
            {**base_env(), "MLRELEASE_MODEL_VARIANT": variant},
            "/ready",
        )
        for variant in VARIANTS
    }


def answering_variant(url: str, name: str) -> str:
    """Which variant the server says answers (its model metadata)."""
    import httpx

    return str(httpx.get(f"{url}/v1/models/{name}", timeout=5).json().get("variant"))


def measure(
    urls: dict[str, str], bodies: dict[int, bytes], path: str, duration: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Per batch and variant: peak req/s (closed loop), then p50/p99 paced at half the slower peak; rounds
    interleaved, the order of the variants alternating, medians kept."""
    results: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
    for batch, body in bodies.items():
        peaks: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(rounds):
            for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
                peaks[variant].append(wrk(urls[variant], path, body, duration, None)["rps"])
        rate = 0.5 * min(statistics.median(p) for p in peaks.values())
        paced: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for i in range(rounds):
            for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
                paced[variant].append(wrk(urls[variant], path, body, duration, rate))
        for variant in VARIANTS:
            kept = sorted(paced[variant], key=lambda r: r["p99_ms"])[len(paced[variant]) // 2]
            results[variant][f"batch_{batch}"] = {
                "peak_rps": statistics.median(peaks[variant]),
                "peak_rows_per_s": statistics.median(peaks[variant]) * batch,
                "peak_rps_rounds": peaks[variant],
                "paced_rps": rate,
                "p50_ms": kept["p50_ms"],
                "p99_ms": kept["p99_ms"],
                "p99_ms_rounds": [r["p99_ms"] for r in paced[variant]],
                "errors": sum(int(r["errors"]) for r in paced[variant]),
            }
    return results


def over_http(model_dir: Path, x: Any, duration: float, rounds: int) -> dict[str, dict[str, Any]]:
    """Both servers up at once; measured in turn; each one's RSS after its load."""
    from mlrelease.core.modelcard import ModelCard

    name = ModelCard.read(model_dir).name
    found = servers(model_dir, name)
    bodies = {n: json.dumps({"instances": x[:n].round(4).tolist()}).encode() for n in BATCHES}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp, contextlib.ExitStack() as stack:
        up = {v: stack.enter_context(started(replace(c, body=bodies[1]), Path(tmp))) for v, c in found.items()}
        urls = {variant: url for variant, (url, _) in up.items()}
        for variant, url in urls.items():
            said = answering_variant(url, name)
            if said != variant:
                raise RuntimeError(f"the {variant} server says {said!r} answers")
        results = measure(urls, bodies, found["fp32"].path, duration, rounds)
        for variant, (_, pid) in up.items():
            results[variant]["rss_mb"] = rss_mb(pid)
    return results


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """INT8 over FP32 for the headline figures (below 1: INT8 smaller or faster)."""
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    out = {"artifact_bytes": int8["artifact_bytes"] / fp32["artifact_bytes"], "rss_mb": int8["rss_mb"] / fp32["rss_mb"]}
    for batch in (f"batch_{n}" for n in BATCHES):
        out[f"module_p50_{batch}"] = int8["module_latency_ms"][batch]["p50"] / fp32["module_latency_ms"][batch]["p50"]
        for key in ("peak_rps", "p50_ms", "p99_ms"):
            out[f"http_{key}_{batch}"] = int8[batch][key] / fp32[batch][key]
    return {k: round(v, 3) for k, v in out.items()}


def markdown(report: dict[str, Any]) -> str:
    """One row per variant: the figures docs/benchmarks.md quotes."""
    rows = [
        "| variant | accuracy | ROC AUC | artifact | module p50 b1 / b32 (µs) | HTTP peak req/s b1 / b32 | "
        "HTTP p50 / p99 b1 (ms) | HTTP p50 / p99 b32 (ms) | RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in report["variants"].items():
        m, b1, b32 = v["module_latency_ms"], v["batch_1"], v["batch_32"]
        rows.append(
            f"| {variant} | {v['accuracy']:.4f} | {v['roc_auc']:.4f} | {v['artifact_bytes']:,} B | "
            f"{1000 * m['batch_1']['p50']:.1f} / {1000 * m['batch_32']['p50']:.1f} | "
            f"{b1['peak_rps']:,.0f} / {b32['peak_rps']:,.0f} | {b1['p50_ms']:.2f} / {b1['p99_ms']:.2f} | "
            f"{b32['p50_ms']:.2f} / {b32['p99_ms']:.2f} | {v['rss_mb']:.0f} |"
        )
    return "\n".join(rows) + "\n"


def run(model_dir: Path, test_csv: Path, params: Path, out: Path, duration: float, rounds: int) -> dict[str, Any]:
    """Measure both variants and write the JSON and markdown reports."""
    import torch

    started_at, load_before = time.monotonic(), os.getloadavg()[0]
    figures, x = offline(model_dir, test_csv, params)
    served = over_http(model_dir, x, duration, rounds)
    report: dict[str, Any] = {"variants": {v: {**figures[v], **served[v]} for v in VARIANTS}}
    report["ratios_int8_to_fp32"] = ratios(report)
    report["setup"] = (
        f"Bundle {model_dir}; test split {test_csv}. Module latency: torch.jit.load of each artifact, one thread, "
        f"3000 interleaved runs. HTTP: wrk 1 thread x {CONNECTIONS} connections on CPU {SERVER_CPU + 1}, servers "
        f"on CPU {SERVER_CPU}, {duration:g} s per point, {rounds} interleaved rounds; latency paced at half the "
        f"slower variant's peak. 1-minute load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}."
    )
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    report["elapsed_s"] = time.monotonic() - started_at
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="bench_int8", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--test-csv", type=Path, default=Path("data/prepared/test.csv"))
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_int8.json")
    parser.add_argument("--duration", type=int, default=4, help="whole seconds per wrk point")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    report = run(args.model_dir, args.test_csv, args.params, args.out, args.duration, args.rounds)
    sys.stdout.write(markdown(report))
    sys.stdout.write(json.dumps(report["ratios_int8_to_fp32"], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
