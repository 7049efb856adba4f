"""The data contract a row must meet to be scored, the reason a row breaks it, and where a version's contract is.

The contract is pipelines/schema.py's: each feature's dtype, range and nullability. Scoring checks it row by row
(table limits such as min_rows are for training splits, not for rows to score). A scored row needs a finite value
in float32 range for every feature, so a null breaks even a nullable feature: the model has no input for it.
Every check has one reason text, built here for both engines so that the local and the Spark engine reject the
same rows with the same words.

The registered bundle carries the model card (feature names and classes), not the YAML contract. The version's
contract is the one at the commit it was registered from (its ``git_commit`` tag); ``--schema`` names one, and a
version registered from uncommitted changes falls back to the workspace's ``data.schema``. Whichever is used must
declare exactly the card's features.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mlrelease.core.errors import UserError
from mlrelease.core.modelcard import ModelCard
from pipelines.schema import DataContract, FeatureSpec, load_contract

log = logging.getLogger(__name__)

FLOAT32_MAX = float(np.finfo(np.float32).max)
#: the checks of one feature, in the order a row's reason names the first that fails
CHECKS = ("not_a_number", "missing", "infinite", "float32", "below", "above", "not_integer")
NAN_TEXT = ("nan", "+nan", "-nan")
REASON = "reason"  # the rejects file's column saying why a row was refused
OUTPUT_REASON = "model output: NaN or Inf (the inputs are too far out of the range the model was trained on)"


class ContractMismatch(UserError):
    """The contract found for a version does not declare the version's own features."""


def reason_text(spec: FeatureSpec, check: str) -> str:
    """The reason a row gives for ``spec``'s ``check`` failing, e.g. ``mean radius: above max 33.39225``."""
    texts = {
        "not_a_number": "not a number",
        "missing": "missing",
        "infinite": "infinite",
        "float32": f"beyond the float32 range (+/-{FLOAT32_MAX:.6g})",
        "below": f"below min {spec.min!r}",
        "above": f"above max {spec.max!r}",
        "not_integer": "not an integer",
    }
    return f"{spec.name}: {texts[check]}"


def applies(spec: FeatureSpec, check: str) -> bool:
    """Whether ``check`` is part of ``spec`` (a bound only when declared, the integer check for int features)."""
    return {"below": spec.min is not None, "above": spec.max is not None, "not_integer": spec.dtype == "int"}.get(
        check, True
    )


@dataclass(frozen=True)
class ScoringContract:
    """The features of one version in the order its model takes them, with their rules; where they came from."""

    features: tuple[FeatureSpec, ...]
    target: str
    source: str

    @property
    def feature_names(self) -> list[str]:
        return [spec.name for spec in self.features]

    def missing_columns(self, columns: list[str]) -> list[str]:
        """Features the input does not have."""
        have = set(columns)
        return [name for name in self.feature_names if name not in have]

    def reasons(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(reason per row, '' for a row that meets the contract; the features as a float64 [rows, features]
        matrix): the numbers a valid row is scored on are the ones checked."""
        matrix = np.empty((len(frame), len(self.features)), dtype=np.float64)
        parts = []
        for j, spec in enumerate(self.features):
            raw = frame[spec.name]
            values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            matrix[:, j] = values
            parts.append(_feature_reasons(spec, _no_value(raw), values))
        return _joined(parts, len(frame)), matrix


def _no_value(raw: pd.Series) -> np.ndarray:
    """Cells with no value: null, or (in a text column) the text NaN, which Spark parses as NaN too."""
    null = raw.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return null
    text = raw.astype(str).str.strip().str.lower().isin(NAN_TEXT).to_numpy()
    return null | text


def _feature_reasons(spec: FeatureSpec, null: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One feature's reason per row ('' when it passes): the first failing check in :data:`CHECKS` order."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        conditions = {
            "not_a_number": ~null & np.isnan(values),
            "missing": null | np.isnan(values),
            "infinite": np.isinf(values),
            "float32": finite & (np.abs(values) > FLOAT32_MAX),
            "below": finite & (values < (spec.min if spec.min is not None else -np.inf)),
            "above": finite & (values > (spec.max if spec.max is not None else np.inf)),
            "not_integer": finite & (values != np.floor(values)),
        }
    used = [check for check in CHECKS if applies(spec, check)]
    return np.select([conditions[c] for c in used], [reason_text(spec, c) for c in used], default="").astype(object)


def _joined(parts: list[np.ndarray], rows: int) -> np.ndarray:
    """Per row, the features' reasons joined with '; ' (only rows with one are joined: most rows have none)."""
    reasons = np.full(rows, "", dtype=object)
    if not parts:
        return reasons
    stacked = np.stack(parts, axis=1)
    bad = np.flatnonzero((stacked != "").any(axis=1))
    reasons[bad] = ["; ".join(r for r in row if r) for row in stacked[bad]]
    return reasons


def scoring_contract(contract: DataContract, card: ModelCard, source: str) -> ScoringContract:
    """The contract's rules in the card's feature order; ContractMismatch when they declare other features."""
    specs = {spec.name: spec for spec in contract.features}
    extra = sorted(set(specs) - set(card.feature_names))
    absent = [name for name in card.feature_names if name not in specs]
    if extra or absent:
        raise ContractMismatch(
            f"the contract {source} does not declare the features of version {card.name} (missing: "
            f"{absent or 'none'}; not the model's: {extra or 'none'}): pass --schema with the contract the "
            "version was trained on"
        )
    return ScoringContract(tuple(specs[name] for name in card.feature_names), contract.target.name, source)


def version_contract(card: ModelCard, tags: Mapping[str, str], home: Path, schema: Path | None) -> ScoringContract:
    """The version's contract: ``schema`` if given, else the one at its ``git_commit``, else the workspace's."""
    if schema is not None:
        return scoring_contract(load_contract(schema), card, str(schema))
    commit = tags.get("git_commit", "")
    committed = contract_at_commit(home, commit) if commit and not commit.endswith("-dirty") else None
    if committed is not None:
        contract, path = committed
        return scoring_contract(contract, card, f"{path} at commit {commit[:12]}")
    from mlrelease.core.params import load_params

    workspace = home / load_params(home / "params.yaml").data.schema_path
    log.warning(
        "version %s: no committed contract found (git_commit %r); using the workspace's %s",
        card.name,
        commit or "unknown",
        workspace,
    )
    return scoring_contract(load_contract(workspace), card, str(workspace))


def contract_at_commit(home: Path, commit: str) -> tuple[DataContract, str] | None:
    """The data contract params.yaml named at ``commit`` in the repository at ``home``; None when git, the commit
    or either file is not there."""
    params = _git_show(home, commit, "params.yaml")
    try:
        path = str(((yaml.safe_load(params) or {}).get("data") or {}).get("schema") or "") if params else ""
        text = _git_show(home, commit, path) if path else None
        return (DataContract.model_validate(yaml.safe_load(text)), path) if text else None
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        log.warning("the contract at commit %s cannot be read: %s", commit[:12], exc)
        return None


def _git_show(home: Path, commit: str, path: str) -> str | None:
    """``PATH`` (relative to ``home``) at ``commit``; None when git cannot say."""
    from pipelines.compare import git_show

    try:
        return git_show(commit, f"./{path}", cwd=home)
    except (OSError, ValueError):
        return None
