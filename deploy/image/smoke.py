"""Smoke test of a built image: start its own entrypoint on a loopback port, wait for /ready, and check that the
container's predictions equal the registered model's predictions (TorchScript on the host) for the same rows.

Whatever happens, the container process group is stopped and the working container removed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.engine import Engine, inspect_image
from mlrelease.core.http import probe, wait_until
from mlrelease.core.modelcard import MODEL_FILE, REFERENCE_FILE, ModelCard, ReferenceStats
from mlrelease.core.net import free_port, stop_process

log = logging.getLogger(__name__)


class SmokeError(RuntimeError):
    """The image did not become ready, or its predictions differ from the registered model's."""


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke test saw."""

    rows: int
    max_abs_diff: float
    ready_seconds: float
    healthcheck_ok: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "ready_seconds": round(self.ready_seconds, 2),
            "healthcheck_ok": self.healthcheck_ok,
            "passed": True,
        }


def reference_inputs(bundle: Path, rows: int, data_csv: Path | None = None) -> list[list[float]]:
    """Rows to predict: from the prepared test split when present, else spread over the reference quantiles."""
    card = ModelCard.read(bundle)
    if data_csv is not None and data_csv.is_file():
        import pandas as pd

        frame = pd.read_csv(data_csv)
        if set(card.feature_names) <= set(frame.columns):
            return frame[card.feature_names].head(rows).astype("float32").to_numpy().tolist()
    stats = ReferenceStats.model_validate_json((bundle / REFERENCE_FILE).read_text())
    out = []
    for i in range(rows):
        row: list[float] = []
        for name in card.feature_names:
            edges = stats.features[name].edges
            row.append(float(edges[(i * 7 + len(row)) % len(edges)]))
        out.append(row)
    return out


def host_predictions(bundle: Path, rows: list[list[float]]) -> list[list[float]]:
    """The registered model's probabilities for ``rows``: torch.jit.load of the same model.pt, on the host."""
    import torch

    module = torch.jit.load(str(bundle / MODEL_FILE), map_location="cpu")
    module.eval()
    with torch.inference_mode():
        return module(torch.tensor(rows, dtype=torch.float32)).tolist()


def _post(url: str, body: dict[str, object], timeout: float) -> tuple[int, bytes]:
    """Status and body of a JSON POST to the container (a loopback URL we built)."""
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _entrypoint(engine: Engine, ref: str) -> list[str]:
    """The image's own ENTRYPOINT + CMD, as the runtime would start it."""
    config = inspect_image(engine, ref)["config"]
    assert isinstance(config, dict)
    argv = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    if not argv:
        raise SmokeError(f"{ref} has neither ENTRYPOINT nor CMD: nothing to start")
    return argv


@contextmanager
def running_container(
    engine: Engine, ref: str, port: int, log_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start the image's entrypoint listening on 127.0.0.1:port (output to ``log_path``); stop and clean up on exit."""
    env = {"MLRELEASE_HOST": "127.0.0.1", "MLRELEASE_PORT": str(port)}
    container = None
    if engine.is_buildah:
        container = engine.run("from", "--pull=never", ref).stdout.strip()
        env_args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        argv = engine.cmd(
            "run", "--isolation", engine.isolation or "chroot", *env_args, container, "--", *_entrypoint(engine, ref)
        )
    else:
        container = f"mlrelease-smoke-{port}"
        # inside the container's own network namespace; published on the host's loopback only (-p 127.0.0.1:...)
        inside = {**env, "MLRELEASE_HOST": "0.0.0.0"}  # nosec B104
        env_args = [a for k, v in inside.items() for a in ("-e", f"{k}={v}")]
        argv = engine.cmd("run", "--rm", "--name", container, "-p", f"127.0.0.1:{port}:{port}", *env_args, ref)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **engine.extra_env},
        )
    try:
        yield proc, container
    finally:
        _stop(engine, proc, container)


def _stop(engine: Engine, proc: subprocess.Popen[bytes], container: str | None) -> None:
    """SIGTERM the process group we started, SIGKILL after a grace period, then remove the container."""
    if not engine.is_buildah and container:
        engine.run("stop", "-t", "10", container, check=False, timeout=60)
    stop_process(proc, 15.0, group=True)
    if engine.is_buildah and container:
        engine.run("rm", container, check=False, timeout=300)


def wait_ready(proc: subprocess.Popen[bytes], base_url: str, timeout: float, log_path: Path) -> float:
    """Poll /ready until 200; fail fast when the container exits. Returns the seconds it took."""

    def ready() -> bool:
        if proc.poll() is not None:
            err = log_path.read_text(errors="replace")[-2000:] if log_path.is_file() else ""
            raise SmokeError(f"the container exited with code {proc.returncode} before /ready: {err}")
        return probe(f"{base_url}/ready", timeout=2)[0] == 200

    start = time.monotonic()
    if not wait_until(ready, timeout, interval=0.5):
        raise SmokeError(f"/ready did not answer 200 within {timeout:.0f} s at {base_url}")
    return time.monotonic() - start


def compare(expected: list[list[float]], body: bytes, atol: float) -> float:
    """Max absolute difference between host and container probabilities; SmokeError when above ``atol``."""
    payload = json.loads(body)
    got = [pred["probabilities"] for pred in payload.get("predictions", [])]
    if len(got) != len(expected):
        raise SmokeError(f"the container returned {len(got)} predictions for {len(expected)} rows: {payload}")
    diff = max(
        abs(a - b) for row_e, row_g in zip(expected, got, strict=True) for a, b in zip(row_e, row_g, strict=True)
    )
    if diff > atol:
        raise SmokeError(f"container predictions differ from the registered model by {diff:.3g} (> {atol:g})")
    return diff


def healthcheck_ok(engine: Engine, ref: str, container: str, container_port: int) -> bool:
    """Run the image's HEALTHCHECK command once inside the running container, as the engine would."""
    config = inspect_image(engine, ref)["config"]
    assert isinstance(config, dict)
    test = list((config.get("Healthcheck") or {}).get("Test") or [])
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        return False
    argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    if engine.is_buildah:
        proc = engine.run(
            "run",
            "--isolation",
            engine.isolation or "chroot",
            "--env",
            f"MLRELEASE_PORT={container_port}",
            container,
            "--",
            *argv,
            check=False,
            timeout=60,
        )
    else:
        proc = engine.run("exec", "-e", f"MLRELEASE_PORT={container_port}", container, *argv, check=False, timeout=60)
    return proc.returncode == 0


def smoke_test(
    engine: Engine, ref: str, bundle: Path, rows: list[list[float]], atol: float, ready_timeout: float = 180
) -> SmokeResult:
    """Start the image, wait for /ready, compare a prediction with the host model's; always clean up."""
    card = ModelCard.read(bundle)
    expected = host_predictions(bundle, rows)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mlrelease-smoke-") as tmp:
        log_path = Path(tmp) / "container.log"
        with running_container(engine, ref, port, log_path) as (proc, container):
            ready = wait_ready(proc, base_url, ready_timeout, log_path)
            status, body = _post(f"{base_url}/v1/models/{card.name}:predict", {"instances": rows}, timeout=30)
            if status != 200:
                raise SmokeError(f"predict answered {status}: {body[:500]!r}")
            diff = compare(expected, body, atol)
            health = healthcheck_ok(engine, ref, container, port)
    if not health:
        raise SmokeError(f"the image's HEALTHCHECK failed against the running server of {ref}")
    log.info("smoke test passed: %d rows, max |diff| %.2g, ready in %.1f s", len(rows), diff, ready)
    return SmokeResult(len(rows), diff, ready, health)
