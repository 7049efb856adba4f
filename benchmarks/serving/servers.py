"""The servers the benchmark compares: how each is started, what it is sent, and the model-less references."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.serving.config import SERVER_CPU, base_env, pinned
from mlrelease.core.net import free_port, stop_process


@dataclass(frozen=True)
class Candidate:
    """A server to measure: how to start it, where to post, and what to post."""

    key: str
    label: str
    path: str
    body: bytes
    command: Callable[[int], list[str]]
    env: dict[str, str]
    ready_path: str


@contextlib.contextmanager
def started(candidate: Candidate, logs: Path) -> Iterator[tuple[str, int]]:
    """Start the candidate pinned to SERVER_CPU, wait until it answers the payload; always stop it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = logs / f"{candidate.key}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, candidate.command(port)),
            env=candidate.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{candidate.label} did not start:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + candidate.ready_path, timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        answer = httpx.post(
            url + candidate.path,
            content=candidate.body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"{candidate.label} answered {answer.status_code}: {answer.text[:300]}")
        yield url, proc.pid
    finally:
        stop_process(proc, 20, group=True)


def served_runtime(url: str, candidate: Candidate) -> str | None:
    """What answers predictions (``numpy`` or ``torchscript``), from our server's model metadata; None elsewhere.

    ``MLRELEASE_MODEL_RUNTIME=auto`` falls back to TorchScript when the lowering does not check out: the numpy row's
    ratio means something only when the numpy runner really answered.
    """
    import httpx

    if not candidate.path.endswith(":predict") or candidate.ready_path != "/ready":
        return None
    try:
        meta = httpx.get(url + candidate.path.removesuffix(":predict"), timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    runtime = meta.get("runtime") if isinstance(meta, dict) else None
    return runtime if isinstance(runtime, str) else None


def payload(model_dir: Path) -> tuple[list[float], str]:
    """One instance: the training mean of every feature (from the card); and the model name."""
    from mlrelease.core.modelcard import ModelCard

    card = ModelCard.read(model_dir)
    return [round(v, 4) for v in card.preprocessing.mean], card.name


def register_for_mlflow(model_dir: Path, home: Path) -> tuple[str, dict[str, str]]:
    """Log the same bundle as an MLflow pyfunc (registry.register) in a throwaway registry -> URI, env."""
    from mlrelease.core.modelcard import ModelCard
    from mlrelease.core.settings import Settings
    from registry.register import register_bundle

    private: dict[str, Any] = {"home": home, "MLFLOW_TRACKING_URI": None}  # a throwaway sqlite registry
    settings = Settings(**private)
    name = ModelCard.read(model_dir).name
    version, _ = register_bundle(model_dir, name, metrics={}, params={}, tags={"purpose": "bench"}, settings=settings)
    env = base_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn`
    return f"models:/{name}/{version.version}", {**env, "MLFLOW_TRACKING_URI": settings.tracking_uri}


BARE = (
    ("bare_asgi", "bare ASGI (no model)", ()),
    ("bare_fast", "bare, same fast path (no model)", ("--fast",)),
    ("bare_plain", "bare asyncio protocol, no framework (no model)", ("--plain",)),
)


def bare_candidate(key: str, label: str, flags: tuple[str, ...], path: str, body: bytes) -> Candidate:
    """A model-less reference server (``python -m benchmarks.bare`` with ``flags``)."""
    py = sys.executable
    return Candidate(
        key, label, path, body, lambda p: [py, "-m", "benchmarks.bare", *flags, "--port", str(p)], base_env(), "/"
    )


def our_candidates(model_dir: Path, path: str, body: bytes) -> list[Candidate]:
    """Our server as configured by default (TorchScript), and with the opt-in numpy runner."""
    py = sys.executable
    ours = Candidate(
        "mlrelease",
        "mlrelease server",
        path,
        body,
        lambda p: [py, "-m", "deploy.serving", "--model-dir", str(model_dir), "--port", str(p)],
        base_env(),
        "/ready",
    )
    numpy = replace(
        ours,
        key="mlrelease_numpy",
        label="mlrelease server, numpy runner (MLRELEASE_MODEL_RUNTIME=auto)",
        env={**ours.env, "MLRELEASE_MODEL_RUNTIME": "auto"},
    )
    return [ours, numpy]


def mlflow_candidate(model_dir: Path, work: Path, row: list[float]) -> Candidate:
    """``mlflow models serve`` (one worker) on the same bundle, registered in a throwaway registry under ``work``."""
    from mlrelease.core.modelcard import ModelCard

    uri, env = register_for_mlflow(model_dir, work / "mlflow-home")
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    names = ModelCard.read(model_dir).feature_names  # the MLflow signature is column-based: named records
    body = json.dumps({"inputs": [dict(zip(names, row, strict=True))]}, separators=(",", ":")).encode()
    serve = ["models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1"]
    return Candidate(
        "mlflow",
        "mlflow models serve",
        "/invocations",
        body,
        lambda p: [mlflow_bin, *serve, "-p", str(p), "-w", "1"],
        env,
        "/ping",
    )


def candidates(model_dir: Path, work: Path, skip_mlflow: bool) -> list[Candidate]:
    """Every server of the first measurement: the bare references, ours twice, and mlflow unless skipped."""
    row, name = payload(model_dir)
    path = f"/v1/models/{name}:predict"
    body = json.dumps({"instances": [row]}, separators=(",", ":")).encode()
    found = [bare_candidate(key, label, flags, path, body) for key, label, flags in BARE]
    found += our_candidates(model_dir, path, body)
    if not skip_mlflow:
        found.append(mlflow_candidate(model_dir, work, row))
    return found


def cost_matched(results: dict[str, dict[str, Any]], ours: Candidate) -> list[Candidate]:
    """The bare protocol made to cost, per request, what our server spent beyond it at the peak: servers of our
    cost without our structure, measured after the others since their cost comes from them.

    Three of them (benchmarks/bare.py): fixed work of that cost, which a slow core slows down as it does
    real work; half that work, which shows where this core's tail starts to miss the target; and a busy loop on
    the CPU clock of that cost, which a slow core does not lengthen (where it meets the target and its
    fixed-work twin misses, the miss comes with real work of that cost on this core, not with our structure).
    """
    if "mlrelease" not in results or "bare_plain" not in results:
        return []
    extra_us = 1000 * (results["mlrelease"]["cpu_ms_per_request"] - results["bare_plain"]["cpu_ms_per_request"])
    if extra_us <= 0:
        return []
    variants = [
        ("bare_work_matched", "--work-us", extra_us, f"+ {extra_us:.0f} us of fixed work per request (our cost)"),
        ("bare_work_half", "--work-us", extra_us / 2, f"+ {extra_us / 2:.0f} us of fixed work per request (half)"),
        ("bare_cpu_matched", "--burn-us", extra_us, f"+ {extra_us:.0f} us on the CPU clock per request (our cost)"),
    ]
    return [
        bare_candidate(
            key, f"bare asyncio protocol {label}, no model", ("--plain", flag, f"{us:.1f}"), ours.path, ours.body
        )
        for key, flag, us, label in variants
    ]
