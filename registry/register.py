"""Register an exported bundle as a new MLflow model version, idempotently, and fetch bundles back.

The version is an MLflow pyfunc model defined from code (registry/pyfunc_model.py) carrying model.pt,
its model card and reference statistics as artifacts: loading it never unpickles anything. A variant that passed
its gates (the INT8 module) is a second artifact of the same version, with its own sha256 tag
(``artifact_sha256_int8``). Registering the same artifacts (the same sha256 of each) twice returns the existing
version.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrelease.core.modelcard import (
    CARD_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    VARIANT_FILES,
    IntegrityError,
    ModelCard,
    verify_bundle,
    verify_variant,
)
from mlrelease.core.settings import Settings
from registry.client import configure_mlflow, ensure_experiment, get_client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)
BUNDLE_FILES = {"model": MODEL_FILE, "model_card": CARD_FILE, "reference_stats": REFERENCE_FILE}
SHA_TAG = "artifact_sha256"
VARIANTS_TAG = "variants"  # the artifacts a version carries: "fp32" or "fp32,int8"


def variant_tag(variant: str) -> str:
    """The version tag holding a variant artifact's sha256 (``artifact_sha256_int8``)."""
    return f"{SHA_TAG}_{variant}"


def variant_shas(tags: dict[str, str]) -> dict[str, str]:
    """The sha256 of each variant artifact a version's tags name (none for a version registered without one)."""
    return {variant: tags[variant_tag(variant)] for variant in VARIANT_FILES if tags.get(variant_tag(variant))}


def find_version_by_sha(
    model_name: str, sha256: str, settings: Settings | None = None, variants: dict[str, str] | None = None
) -> ModelVersion | None:
    """The existing version of ``model_name`` whose artifact has this sha256, if any; with ``variants`` (variant ->
    sha256, possibly empty), only one that carries exactly those variant artifacts."""
    client = get_client(settings)
    versions = client.search_model_versions(f"name='{model_name}'")  # an unreachable registry raises, never "none"
    matches = [
        v for v in versions if v.tags.get(SHA_TAG) == sha256 and (variants is None or variant_shas(v.tags) == variants)
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def _signature_and_example(bundle_dir: Path, card: ModelCard, example: Any) -> tuple[Any, Any]:
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    if example is None:
        example = pd.DataFrame([card.preprocessing.mean], columns=card.feature_names)
    module = torch.jit.load(str(bundle_dir / MODEL_FILE), map_location="cpu")
    with torch.inference_mode():
        output = module(torch.from_numpy(example.to_numpy(dtype=np.float32).copy())).numpy()
    return infer_signature(example, output), example


def _log_pyfunc(
    bundle_dir: Path,
    card: ModelCard,
    run_id: str | None,
    experiment: str,
    example: Any,
    settings: Settings | None,
    variants: tuple[str, ...] = (),
) -> str:
    """Log the bundle (and the given variants' artifacts) as a models-from-code pyfunc in the training run (or a
    new run); return its model URI."""
    import mlflow
    import torch

    signature, example = _signature_and_example(bundle_dir, card, example)
    code = Path(__file__).with_name("pyfunc_model.py")
    artifacts = {key: str(bundle_dir / name) for key, name in BUNDLE_FILES.items()}
    artifacts |= {f"model_{variant}": str(bundle_dir / VARIANT_FILES[variant]) for variant in variants}
    run_kwargs: dict[str, Any] = (
        {"run_id": run_id} if run_id else {"experiment_id": ensure_experiment(experiment, settings)}
    )
    with mlflow.start_run(**run_kwargs):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"],
        )
    return str(info.model_uri)


def register_bundle(
    bundle_dir: Path,
    model_name: str,
    *,
    metrics: dict[str, float],
    params: dict[str, Any],
    tags: dict[str, str],
    run_id: str | None = None,
    example: Any = None,
    settings: Settings | None = None,
    variants: tuple[str, ...] = (),
) -> tuple[ModelVersion, bool]:
    """Register the verified bundle with the given variants (each verified against its card entry) and alias it
    `candidate`; returns (version, created)."""
    import mlflow

    from registry.artifacts import artifact_errors

    card = verify_bundle(bundle_dir)
    shas = {variant: verify_variant(bundle_dir, variant).variants[variant].sha256 for variant in variants}
    uri = configure_mlflow(settings)
    client = get_client(settings)
    existing = find_version_by_sha(model_name, card.sha256, settings, variants=shas)
    if existing is not None:
        log.info(
            "register: artifact %s is already version %s; not creating another", card.sha256[:12], existing.version
        )
        client.set_registered_model_alias(model_name, "candidate", existing.version)
        return client.get_model_version(model_name, existing.version), False
    with artifact_errors(uri, "store"):
        model_uri = _log_pyfunc(bundle_dir, card, run_id, model_name, example, settings, variants)
    sha_tags = {SHA_TAG: card.sha256, **{variant_tag(v): sha for v, sha in shas.items()}}
    version = mlflow.register_model(model_uri, model_name, tags=sha_tags)
    all_tags = {
        VARIANTS_TAG: ",".join(("fp32", *variants)),
        **tags,
        **{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()},
        **{f"param.{k}": str(v)[:500] for k, v in params.items()},
    }
    for key, value in all_tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    client.set_registered_model_alias(model_name, "candidate", version.version)
    return client.get_model_version(model_name, version.version), True


def resolve_version(model_name: str, ref: str, settings: Settings | None = None) -> ModelVersion:
    """A version from `models:/NAME@ALIAS`, `models:/NAME/V`, an alias name or a version number."""
    client = get_client(settings)
    if ref.startswith("models:/"):
        body = ref[len("models:/") :]
        if "@" in body:
            model_name, alias = body.split("@", 1)
            return client.get_model_version_by_alias(model_name, alias)
        model_name, _, ref = body.partition("/")
    if ref.isdigit():
        return client.get_model_version(model_name, ref)
    return client.get_model_version_by_alias(model_name, ref)


def download_bundle(model_uri_or_version: str, model_name: str, dest: Path, settings: Settings | None = None) -> Path:
    """Fetch a version's bundle into ``dest`` and verify its sha256 against card and registry tag."""
    import mlflow

    from registry.artifacts import artifact_errors

    version = resolve_version(model_name, model_uri_or_version, settings)
    expected = version.tags.get(SHA_TAG)
    if not expected:
        raise IntegrityError(f"version {version.name}/{version.version} has no {SHA_TAG} tag; refusing to load it")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, artifact_errors(configure_mlflow(settings), "fetch"):
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=tmp)
        )
        for name in BUNDLE_FILES.values():
            found = next(local.rglob(name), None)
            if found is None:
                raise IntegrityError(f"version {version.name}/{version.version} has no {name} in its artifacts")
            shutil.copyfile(found, dest / name)
        _copy_variants(local, dest, variant_shas(version.tags), f"{version.name}/{version.version}")
    verify_bundle(dest, expected_sha256=expected)
    return dest


def _copy_variants(local: Path, dest: Path, shas: dict[str, str], label: str) -> None:
    """Copy each variant artifact the version's tags name into its place in the bundle, checked against its tag."""
    for variant, sha in shas.items():
        relative = VARIANT_FILES[variant]
        found = next(local.rglob(Path(relative).name), None)
        if found is None:
            raise IntegrityError(f"version {label} is tagged with a {variant} artifact but has none in its artifacts")
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, dest / relative)
        verify_variant(dest, variant, expected_sha256=sha)
