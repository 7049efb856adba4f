"""Load one model bundle: verify its sha256, ``torch.jit.load`` it, warm it up and check what it returns.

A bundle may carry an INT8 variant (variants/model_int8.pt, listed in the card with its own sha256); the
``variant`` asked for picks the artifact, checked the same way. INT8's quantized ops have no numpy lowering, so
TorchScript serves it.

A ``LoadedModel`` is immutable once built; the server swaps whole instances, so a request that started on one
model finishes on it.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlrelease.core.modelcard import (
    CARD_FILE,
    FP32,
    REFERENCE_FILE,
    IntegrityError,
    ModelCard,
    ReferenceStats,
    VariantMissing,
    read_verified_artifact,
)

log = logging.getLogger(__name__)

WARMUP_ROUNDS = 5
PROBABILITY_TOLERANCE = 1e-3


class ModelLoadError(RuntimeError):
    """The bundle cannot be served: missing files, bad checksum, or a module breaking its card's promise."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed TorchScript module with the facts the API needs about it."""

    card: ModelCard
    version: str
    source: str
    module: Any
    reference: ReferenceStats | None
    feature_index: dict[str, int] = field(default_factory=dict)
    batch_ms: float = float("nan")  # median warm-up time of the largest batch
    runner: Callable[[np.ndarray], np.ndarray] | None = None  # the checked numpy lowering (lowering.py), if any
    variant: str = FP32  # which artifact answers: fp32 (model.pt) or int8 (variants/model_int8.pt)
    artifact_sha256: str = ""  # that artifact's sha256 (the version's identity stays ``sha256``: model.pt's)

    @property
    def runtime(self) -> str:
        """What answers: ``numpy`` (the checked lowering) or ``torchscript``."""
        return "torchscript" if self.runner is None else "numpy"

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @property
    def n_features(self) -> int:
        return self.card.n_features

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a float32 [N, F] batch (called from the batcher's single worker thread)."""
        if self.runner is not None:
            return self.runner(batch)
        import torch

        # inference_mode, not merely grad off: no version counters or autograd metadata on the call's tensors,
        # about a third of a small model's call (51 -> 32 us for 17 rows here, the context's cost included)
        with torch.inference_mode():
            out = self.module.forward(torch.from_numpy(batch))  # .forward skips nn.Module hook dispatch (~15 us)
        return np.asarray(out.numpy(), dtype=np.float32)


def set_threads(count: int) -> None:
    """Set up a serving thread: intra-op threads, grad off, no TorchScript re-profiling per new batch size.

    For the server's own threads only (grad stays off in the calling thread: never call it where training runs).

    The profiling executor recompiles a graph for each new input shape it meets; with micro-batching every batch
    size is new, so the server runs TorchScript graphs as they were exported (no re-specialisation).
    """
    torch = sys.modules.get("torch")
    if torch is None:  # a model served by a saved numpy program: this process never imports torch
        return
    torch.set_num_threads(count)
    torch._C._set_graph_executor_optimize(False)
    torch.set_grad_enabled(False)  # thread-local: inference only, no autograd bookkeeping per call


def bundle_folder(path: Path) -> Path:
    """Accept a bundle folder or the model.pt inside it; the card must sit next to the artifact."""
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise ModelLoadError(f"{path}: not a folder or file; pass a model bundle folder (model.pt + {CARD_FILE})")
    if not (folder / CARD_FILE).is_file():
        raise ModelLoadError(f"{folder}: no {CARD_FILE}; a bare TorchScript file cannot be verified, export a bundle")
    return folder


def _read_reference(folder: Path) -> ReferenceStats | None:
    path = folder / REFERENCE_FILE
    if not path.is_file():
        log.warning("%s: no %s, drift scores are off for this model", folder, REFERENCE_FILE)
        return None
    return ReferenceStats.model_validate_json(path.read_text())


def _check_output(card: ModelCard, out: np.ndarray, rows: int) -> None:
    """Refuse a module whose output is not [rows, classes] finite probabilities."""
    expected = (rows, len(card.classes))
    if out.shape != expected:
        raise ModelLoadError(f"model returned shape {list(out.shape)}, card promises {list(expected)}")
    if not np.isfinite(out).all():
        raise ModelLoadError("model returned NaN or Inf on warm-up input")
    sums = out.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=PROBABILITY_TOLERANCE):
        raise ModelLoadError(f"model outputs do not sum to 1 (got {float(sums[0]):.4f}); expected probabilities")


def centre_row(card: ModelCard) -> np.ndarray:
    """The training mean as one float32 feature row (zeros when the card has no usable mean): an in-range input."""
    centre = np.asarray(card.preprocessing.mean, dtype=np.float32)
    if centre.shape != (card.n_features,):
        centre = np.zeros(card.n_features, dtype=np.float32)
    return centre


def warm_up(model: LoadedModel, max_batch: int) -> float:
    """Run batch sizes 1, 8 and max_batch on in-range inputs, check every output; return ms per largest batch."""
    centre = centre_row(model.card)
    timings: list[float] = []
    for rows in sorted({1, min(8, max_batch), max_batch}):
        batch = np.ascontiguousarray(np.tile(centre, (rows, 1)))
        timings = []
        for _ in range(WARMUP_ROUNDS):
            start = time.perf_counter()
            out = model.predict(batch)
            timings.append(1000 * (time.perf_counter() - start))
            _check_output(model.card, out, rows)
    return float(np.median(timings))


def frozen(module: Any) -> Any:
    """The module with its weights folded into the graph (same outputs, ~25% less per call at batch 1).

    A module that cannot be frozen (e.g. it mutates its attributes) is served as loaded.
    """
    import torch

    try:
        return torch.jit.freeze(module)
    except (RuntimeError, AttributeError) as exc:
        log.warning("serving the module unfrozen: torch.jit.freeze failed: %s", exc)
        return module


def with_numpy_runner(model: LoadedModel, max_batch: int) -> LoadedModel:
    """The model answering through its numpy lowering when the graph allows one and it matches TorchScript's
    outputs on standardised-range and extreme inputs; else the model unchanged (logged)."""
    from deploy.serving.lowering import Unsupported, check_runner, lower

    try:
        runner = lower(model.module.graph)
        check_runner(runner, model.predict, check_batches(model.card, max_batch))
    except Exception as exc:  # any failure keeps TorchScript; the warm-up then reports a module's own errors
        reason = str(exc) if isinstance(exc, Unsupported) else f"{type(exc).__name__}: {exc}"
        log.info("serving with TorchScript: no numpy runner for this graph (%s)", reason)
        return model
    log.info("serving with the numpy runner of the TorchScript graph (%s)", " -> ".join(runner.ops))
    return replace(model, runner=runner)


def check_batches(card: ModelCard, max_batch: int) -> list[np.ndarray]:
    """Inputs the numpy runner must match TorchScript on: the training mean, spread rows, far-out rows."""
    n = card.n_features
    mean = np.asarray(card.preprocessing.mean, dtype=np.float64)
    scale = np.asarray(card.preprocessing.scale, dtype=np.float64)
    if mean.shape != (n,) or scale.shape != (n,):
        mean, scale = np.zeros(n), np.ones(n)
    rng = np.random.default_rng(0)
    spread = mean + scale * rng.normal(0.0, 1.0, size=(max_batch, n))
    far = mean + scale * rng.normal(0.0, 30.0, size=(max(1, min(8, max_batch)), n))
    return [np.ascontiguousarray(rows, dtype=np.float32) for rows in (mean[None, :], spread, far)]


def _verified_artifact(folder: Path, expected_sha256: str | None, variant: str) -> tuple[ModelCard, bytes]:
    """The card and the variant's bytes, checked against card and registry sha256; ModelLoadError naming why not."""
    try:
        return read_verified_artifact(folder, expected_sha256, variant)
    except VariantMissing as exc:
        raise ModelLoadError(f"refusing to serve variant {variant} of {folder}: {exc}") from exc
    except IntegrityError as exc:
        raise ModelLoadError(f"refusing to serve: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder}: cannot read the bundle: {exc}") from exc


def _torchscript(artifact: bytes, artifact_path: Path, threads: int | None) -> Any:
    """The frozen TorchScript module of the verified bytes (torch is imported here, and only here)."""
    import torch

    if threads is not None:
        set_threads(threads)
    try:
        module = torch.jit.load(io.BytesIO(artifact), map_location="cpu")  # the bytes hashed, not a second read
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{artifact_path}: torch.jit.load failed: {exc}") from exc
    return frozen(module.eval())


def _saved_program(cache: Path | None, artifact_sha256: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The numpy program kept for this artifact by an earlier load (checked then against TorchScript), if any."""
    from deploy.serving.lowering import Unsupported, read_program

    if cache is None or not (cache / f"{artifact_sha256}.npz").is_file():
        return None
    try:
        runner = read_program(cache / f"{artifact_sha256}.npz", artifact_sha256)
    except Unsupported as exc:
        log.warning("not using the saved program: %s", exc)
        return None
    log.info("serving with the saved numpy program of this artifact (%s); torch is not loaded", " -> ".join(runner.ops))
    return runner


def _keep_program(cache: Path | None, model: LoadedModel) -> None:
    """Save the checked numpy program for the next load of the same artifact (a failure only costs that speed)."""
    from deploy.serving.lowering import NumpyRunner, Unsupported, write_program

    if cache is None or not isinstance(model.runner, NumpyRunner):
        return
    try:
        write_program(model.runner, cache / f"{model.artifact_sha256}.npz", model.artifact_sha256)
    except (OSError, Unsupported) as exc:
        log.warning("could not keep the numpy program in %s: %s", cache, exc)


def load_model(
    path: Path,
    *,
    version: str,
    expected_sha256: str | None = None,
    max_batch: int = 64,
    source: str | None = None,
    runtime: Literal["torchscript", "auto"] = "torchscript",
    variant: str = FP32,
    program_cache: Path | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """Verify (card and registry sha256), torch.jit.load only, pick the runtime, warm up; ModelLoadError on failure.

    ``runtime="torchscript"`` (the default) always runs the module; ``"auto"`` answers through the checked numpy
    lowering of the loaded graph when there is one (lowering.py). ``variant`` picks the artifact (``expected_sha256``
    is then that artifact's registry sha256); a bundle without it is refused. With ``program_cache``, ``"auto"``
    keeps each checked lowering there by the artifact's sha256, and a later load of the same verified artifact
    answers through it without importing torch (a supervised restart is then ready in a fraction of the time).
    """
    folder = bundle_folder(path)
    card, artifact = _verified_artifact(folder, expected_sha256, variant)
    artifact_path = folder / card.artifact_of(variant)[0]
    artifact_sha256 = card.artifact_of(variant)[1]
    saved = _saved_program(program_cache, artifact_sha256) if runtime == "auto" else None
    model = LoadedModel(
        card=card,
        version=version,
        source=source or str(folder),
        module=None if saved is not None else _torchscript(artifact, artifact_path, threads),
        reference=_read_reference(folder),
        feature_index={n: i for i, n in enumerate(card.feature_names)},
        runner=saved,
        variant=variant,
        artifact_sha256=artifact_sha256,
    )
    try:
        if runtime == "auto" and saved is None:
            model = with_numpy_runner(model, max_batch)
            _keep_program(program_cache, model)
        model = replace(model, batch_ms=warm_up(model, max_batch))
    except RuntimeError as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"model failed on warm-up input: {exc}") from exc
    log.info(
        "loaded %s version %s (sha256 %s) from %s; variant %s (sha256 %s), runtime %s, batch of %d in %.3f ms",
        card.name,
        version,
        card.sha256[:12],
        folder,
        variant,
        model.artifact_sha256[:12],
        model.runtime,
        max_batch,
        model.batch_ms,
    )
    return model
