"""The model bundle contract shared by export, register, serving, image and promotion.

A bundle is a folder with:
- ``model.pt``: a frozen TorchScript module; ``forward(x: float32[N, F]) -> float32[N, C]`` returns class
  probabilities from *raw* features (standardization is baked in, so serving cannot skew from training);
- ``model_card.json``: this ModelCard;
- ``reference_stats.json``: ReferenceStats of the training split, for drift scores at serving time;
- optionally ``variants/model_int8.pt``: the same model dynamically quantized to INT8, listed in the card's
  ``variants`` with its own sha256 only when it passed its own gates (pipelines/quantize.py).
Nothing here imports torch or MLflow, so the serving image can read it cheaply.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MODEL_FILE = "model.pt"
CARD_FILE = "model_card.json"
REFERENCE_FILE = "reference_stats.json"
VARIANTS_DIR = "variants"  # a DVC out of its own, empty when no variant passed its gates
FP32 = "fp32"
INT8 = "int8"
VARIANT_FILES = {INT8: f"{VARIANTS_DIR}/model_int8.pt"}  # variant -> artifact path inside the bundle
VARIANTS = (FP32, *VARIANT_FILES)


class Standardization(BaseModel):
    """Per-feature constants from the training split, applied inside the exported module."""

    mean: list[float]
    scale: list[float]
    baked_into_module: bool = True


class VariantArtifact(BaseModel):
    """A second artifact of the same version (e.g. INT8): where it is, its sha256, and what its gates measured."""

    model_config = ConfigDict(extra="forbid")

    artifact: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    quantization: str
    metrics: dict[str, float] = Field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = Field(default_factory=dict)


class ModelCard(BaseModel):
    """What a consumer of the artifact needs to know to call it and to trust it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    feature_names: list[str]
    input_dtype: str = "float32"
    input_shape: list[int]
    classes: list[str]
    output: str = "probabilities"
    preprocessing: Standardization
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    torch_version: str
    artifact: str = MODEL_FILE
    export_method: str = "script"
    metrics: dict[str, float] = Field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = Field(default_factory=dict)
    variants: dict[str, VariantArtifact] = Field(default_factory=dict)  # only variants that passed their gates

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def artifact_of(self, variant: str) -> tuple[str, str]:
        """(artifact path, sha256) of ``fp32`` (the main artifact) or of a listed variant; VariantMissing if absent."""
        if variant == FP32:
            return self.artifact, self.sha256
        found = self.variants.get(variant)
        if found is None:
            raise VariantMissing(
                f"this bundle has no {variant.upper()} artifact (export.{variant} was off or the variant failed its "
                f"gates: see reports/export.json); serve {FP32} or a version that has one"
            )
        return found.artifact, found.sha256

    def write(self, folder: Path) -> Path:
        path = folder / CARD_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelCard:
        return cls.model_validate_json((folder / CARD_FILE).read_text())


class FeatureReference(BaseModel):
    """Quantile bin edges of one feature in the training split and the fraction of rows in each bin."""

    edges: list[float]
    fractions: list[float]
    mean: float
    std: float
    min: float
    max: float


class ReferenceStats(BaseModel):
    n_rows: int
    features: dict[str, FeatureReference]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class IntegrityError(RuntimeError):
    """The artifact's bytes do not match the sha256 its card or registry entry promises."""


class VariantMissing(IntegrityError):
    """A variant was asked for that the bundle does not carry (never exported, or dropped by its gates)."""


def _check_sha256(path: Path, actual: str, promised: str, expected_sha256: str | None) -> None:
    if actual != promised:
        raise IntegrityError(f"{path}: sha256 {actual} does not match model card {promised}")
    if expected_sha256 is not None and actual != expected_sha256:
        raise IntegrityError(f"{path}: sha256 {actual} does not match the registry tag {expected_sha256}")


def verify_bundle(folder: Path, expected_sha256: str | None = None) -> ModelCard:
    """Check model.pt against its card (and against the registry's sha256 when given); return the card."""
    card = ModelCard.read(folder)
    path = folder / card.artifact
    _check_sha256(path, sha256_file(path), card.sha256, expected_sha256)
    return card


def verify_variant(folder: Path, variant: str, expected_sha256: str | None = None) -> ModelCard:
    """Check one variant's artifact against its card entry (and the registry's sha256 when given); return the card."""
    card = ModelCard.read(folder)
    artifact, promised = card.artifact_of(variant)
    path = folder / artifact
    if not path.is_file():
        raise IntegrityError(f"{path}: missing, but the model card lists the {variant} variant")
    _check_sha256(path, sha256_file(path), promised, expected_sha256)
    return card


def read_verified_artifact(
    folder: Path, expected_sha256: str | None = None, variant: str = FP32
) -> tuple[ModelCard, bytes]:
    """The card and the variant's artifact bytes (model.pt for fp32), checked as ``verify_bundle`` checks them: a
    loader given these bytes loads exactly what was hashed, even if the folder is rewritten meanwhile (a reload
    while files are copied in). VariantMissing when the card lists no such variant."""
    card = ModelCard.read(folder)
    artifact, promised = card.artifact_of(variant)
    path = folder / artifact
    data = path.read_bytes()
    _check_sha256(path, hashlib.sha256(data).hexdigest(), promised, expected_sha256)
    return card, data
