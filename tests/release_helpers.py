"""Helpers for the release tests and the rollback benchmark: model variants, registration, CLI runs, cleanup.

A *variant* wraps an exported bundle's TorchScript module so only behaviour differs: ``same`` (new bytes, same
answers), ``slow`` (heavy matmuls on every call) or ``error`` (raises for about half the rows, so the server
answers 500). Each variant is written with a correct card sha256 and the original reference stats.
``make_contract_variant`` changes the input contract instead: one more feature, so today's requests get a 422.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.targets.local import LocalTarget

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODES = {"same": 0, "slow": 1, "error": 2, "constant": 3}
# params.yaml overrides that make a canary and a promotion take seconds in a test (one 50% step, short intervals)
FAST_RELEASE: dict[str, Any] = {
    "canary": {
        "steps": [50],
        "interval": "2.5s",
        "min_requests": 15,
        "load_rps": 40,
        "load_concurrency": 4,
        "failure_limit": 0,
        "inconclusive_limit": 1,
    },
    # one replica per production slot: the release story needs no sibling (the incident tests, which kill one, ask
    # for two), and every server started costs the suite about two seconds of CPU
    "promotion": {"rollback_window": "10m", "ready_timeout": "120s", "drain_timeout": "5s", "replicas": 1},
}


def make_variant(bundle: Path, dest: Path, kind: str, reps: int = 40) -> Path:
    """Write a bundle whose model wraps ``bundle``'s model with the given behaviour."""
    import torch

    from mlrelease.core.modelcard import MODEL_FILE, REFERENCE_FILE, ModelCard, ReferenceStats, sha256_file

    card = ModelCard.read(bundle)
    stats = ReferenceStats.model_validate_json((bundle / REFERENCE_FILE).read_text())
    first = stats.features[card.feature_names[0]]
    # above the mean row that registration uses as its input example, below a good share of real rows
    threshold = max(first.mean, card.preprocessing.mean[0]) + 0.25 * first.std

    class Variant(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.mode = MODES[kind]
            self.reps = reps
            self.threshold = threshold
            self.register_buffer("w", torch.eye(192) * 0.9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.mode == 1:
                acc = torch.ones(192, 192)
                for _ in range(self.reps):
                    acc = torch.tanh(acc @ self.w)
                return self.inner(x) + 0.0 * acc.sum()
            if self.mode == 2 and bool((x[:, 0] > self.threshold).any()):
                raise RuntimeError("deliberately bad version")
            probabilities = self.inner(x)
            if self.mode == 3:  # healthy answers, every one of them the first class
                return torch.zeros_like(probabilities).index_fill(1, torch.tensor([0]), 1.0)
            return probabilities

    inner = torch.jit.load(str(bundle / MODEL_FILE))
    module = torch.jit.freeze(torch.jit.script(Variant(inner).eval()))
    dest.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(dest / MODEL_FILE))
    shutil.copyfile(bundle / REFERENCE_FILE, dest / REFERENCE_FILE)
    card.model_copy(update={"sha256": sha256_file(dest / MODEL_FILE)}).write(dest)
    return dest


def register(bundle: Path, home: Path, model_name: str, kind: str) -> str:
    """Register a bundle in the workspace's registry; return the new version number."""
    from mlrelease.core.settings import Settings
    from registry.register import register_bundle

    version, _ = register_bundle(
        bundle, model_name, metrics={}, params={}, tags={"variant": kind}, settings=Settings(home=home)
    )
    return str(version.version)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """Environment for CLI runs against a workspace."""
    return {
        **os.environ,
        "MLRELEASE_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "MLRELEASE_BY": "release-test",
        **extra,
    }


def cli(home: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``mlrelease ARGS`` in the workspace (its params.yaml, its state) and capture the output."""
    return subprocess.run(
        [str(BIN / "mlrelease"), *args],
        cwd=home,
        env=env_for(home, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop_everything(home: Path) -> None:
    """Stop every server and nginx a test started in this workspace."""
    from deploy.targets.local import LocalTarget
    from mlrelease.core.settings import Settings

    LocalTarget(Settings(home=home).state_dir).stop_all()


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def audit_actions(home: Path) -> list[dict[str, Any]]:
    from mlrelease.core.settings import Settings
    from release.audit import AuditLog

    return AuditLog(Settings(home=home).state_dir).records()


def registry(home: Path) -> Any:
    """An MlflowClient on the workspace's registry."""
    from mlrelease.core.settings import Settings
    from registry.client import get_client

    return get_client(Settings(home=home))


def alias(home: Path, name: str, which: str) -> str | None:
    """The version holding ``which``, None when no version has that alias."""
    from mlflow.exceptions import MlflowException

    try:
        return str(registry(home).get_model_version_by_alias(name, which).version)
    except MlflowException:
        return None


def target(home: Path) -> LocalTarget:
    """The workspace's local deployment target."""
    from deploy.targets.local import LocalTarget
    from mlrelease.core.settings import Settings

    return LocalTarget(Settings(home=home).state_dir)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert proc.returncode == 0, show(proc)
    return proc.stdout


def make_contract_variant(bundle: Path, dest: Path) -> Path:
    """A bundle that takes one more feature than ``bundle`` (ignored), so the current clients' rows get a 422."""
    import torch

    from mlrelease.core.modelcard import MODEL_FILE, REFERENCE_FILE, ModelCard, ReferenceStats, sha256_file

    card = ModelCard.read(bundle)
    stats = ReferenceStats.model_validate_json((bundle / REFERENCE_FILE).read_text())
    n = card.n_features

    class Wider(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.n = n

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x[:, : self.n])

    inner = torch.jit.load(str(bundle / MODEL_FILE))
    module = torch.jit.freeze(torch.jit.script(Wider(inner).eval()))
    dest.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(dest / MODEL_FILE))
    extra = "contract_extra_feature"
    first = stats.features[card.feature_names[0]]
    stats.features[extra] = first
    (dest / REFERENCE_FILE).write_text(stats.model_dump_json())
    prep = card.preprocessing.model_copy(
        update={"mean": [*card.preprocessing.mean, first.mean], "scale": [*card.preprocessing.scale, 1.0]}
    )
    wider = card.model_copy(
        update={
            "feature_names": [*card.feature_names, extra],
            "input_shape": [-1, n + 1],
            "preprocessing": prep,
            "sha256": sha256_file(dest / MODEL_FILE),
        }
    )
    wider.write(dest)
    return dest
