"""The data contract (a YAML file in the repo) and its enforcement with pandera.

The contract names every feature with its dtype, range and nullability, the target with its allowed labels,
and table-level limits (minimum rows, duplicate share). Column order does not matter; extra columns fail.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlrelease.core.params import HIGHER_IS_LAXER, LOWER_IS_LAXER, ConfigFileError

MAX_EXAMPLES = 5


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: Literal["float", "int"] = "float"
    min: float | None = Field(None, json_schema_extra=LOWER_IS_LAXER)  # None: open, the laxest
    max: float | None = Field(None, json_schema_extra=HIGHER_IS_LAXER)
    nullable: bool = False


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    labels: list[int | str] = Field(min_length=2)


class DataContract(BaseModel):
    """A declared schema; feature order here is the order the model sees."""

    model_config = ConfigDict(extra="forbid")

    name: str
    features: list[FeatureSpec] = Field(min_length=1)
    target: TargetSpec
    min_rows: int = Field(10, ge=1, json_schema_extra=LOWER_IS_LAXER)
    max_duplicate_fraction: float = Field(0.05, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)

    @model_validator(mode="after")
    def _unique_names(self) -> DataContract:
        names = [f.name for f in self.features] + [self.target.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column names declared twice: {dupes}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def class_names(self) -> list[str]:
        return [str(label) for label in self.target.labels]


class SchemaFileError(ConfigFileError):
    """The schema file itself is missing or malformed."""


def load_contract(path: str | Path) -> DataContract:
    """Read a YAML data contract; a missing, unreadable or malformed one fails with the file name and the bad keys."""
    path = Path(path)
    if not path.is_file():
        raise SchemaFileError(f"{path}: schema file not found (set data.schema in params.yaml or --schema)")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise SchemaFileError(f"{path}: not a text file; a data contract is YAML (`mlrelease infer-schema`)") from exc
    except yaml.YAMLError as exc:
        raise SchemaFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaFileError(f"{path}: not a data contract (a YAML mapping with name, features and target)")
    try:
        return DataContract.model_validate(raw)
    except ValidationError as exc:
        raise SchemaFileError(f"{path}: not a valid data contract: {problems(exc)}") from exc


def problems(exc: ValidationError) -> str:
    """A pydantic error as ``where: what`` pairs on one line (its own text spans lines and links)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'contract'}: {err['msg']}" for err in exc.errors())


def _feature_column(spec: FeatureSpec) -> Any:
    import pandera.pandas as pa

    checks = [
        pa.Check(
            lambda s: np.isfinite(s.astype("float64")) | s.isna(),
            element_wise=False,
            name="finite",
            error="finite: value is +/-inf",
        )
    ]
    if spec.min is not None:
        checks.append(pa.Check.ge(spec.min))
    if spec.max is not None:
        checks.append(pa.Check.le(spec.max))
    dtype = "float64" if spec.dtype == "float" else "int64"
    return pa.Column(dtype, checks=checks, nullable=spec.nullable, coerce=True, required=True)


def _table_checks(contract: DataContract) -> list[Any]:
    import pandera.pandas as pa

    def enough_rows(df: pd.DataFrame) -> bool:
        return len(df) >= contract.min_rows

    def few_duplicates(df: pd.DataFrame) -> bool:
        return len(df) == 0 or df.duplicated().mean() <= contract.max_duplicate_fraction

    return [
        pa.Check(enough_rows, name="min_rows", error=f"fewer than min_rows={contract.min_rows} rows"),
        pa.Check(
            few_duplicates,
            name="max_duplicate_fraction",
            error=f"duplicate rows exceed max_duplicate_fraction={contract.max_duplicate_fraction}",
        ),
    ]


def import_pandera() -> Any:
    """pandera.pandas, imported without the FutureWarning of the pyspark it finds installed (the `spark` extra, for
    batch scoring): pyspark warns about pandas 3 on import, which says nothing about this data's validation."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support", category=FutureWarning)
        import pandera.pandas as pa
    return pa


def to_pandera(contract: DataContract) -> Any:
    """The pandera DataFrameSchema enforcing the contract (strict columns, any order)."""
    pa = import_pandera()

    columns = {spec.name: _feature_column(spec) for spec in contract.features}
    labels = contract.target.labels
    label_dtype = "int64" if all(isinstance(v, int) for v in labels) else "str"
    columns[contract.target.name] = pa.Column(
        label_dtype, checks=[pa.Check.isin(labels)], nullable=False, coerce=True, required=True
    )
    return pa.DataFrameSchema(columns, checks=_table_checks(contract), strict=True, ordered=False, name=contract.name)


class ContractInferenceError(ValueError):
    """A sample from which no contract can be drafted (no rows, no labels, one class, text in a feature column);
    the CLI prints it as one line, exit 2 (mlrelease.cli.explain)."""


def infer_contract(df: pd.DataFrame, target: str, name: str, margin: float = 0.1) -> DataContract:
    """Draft a contract from a trusted sample: observed ranges widened by ``margin`` of their span, a column with
    an empty cell nullable, row and duplicate limits the sample meets. A sample that cannot give one raises
    ContractInferenceError naming the column and what to do."""
    _check_sample(df, target, margin)
    features = [_infer_feature(str(column), df[column], margin) for column in df.columns.drop(target)]
    labels = sorted(pd.unique(df[target]).tolist())
    labels = [int(v) if isinstance(v, (int, np.integer)) else str(v) for v in labels]
    duplicates = float(df.duplicated().mean())
    return DataContract(
        name=name,
        features=features,
        target=TargetSpec(name=target, labels=labels),
        min_rows=min(max(10, len(df) // 20), len(df)),
        max_duplicate_fraction=min(1.0, max(0.05, math.ceil(duplicates * 100) / 100)),
    )


def _check_sample(df: pd.DataFrame, target: str, margin: float) -> None:
    """Refuse what no contract can be drafted from: a bad margin, no rows, no label column, unlabelled rows, one
    class, no feature column."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ContractInferenceError(
            f"margin {margin}: use a share >= 0 of each range's span (e.g. 0.1); a negative one narrows the ranges "
            "below the sample's own values, which would then fail the contract"
        )
    if target not in df.columns:
        shown = ", ".join(map(str, list(df.columns)[:10])) + (", ..." if len(df.columns) > 10 else "")
        raise ContractInferenceError(f"the sample has no column {target!r} (columns: {shown}): name the label column")
    if len(df) == 0:
        raise ContractInferenceError("the sample has a header but no rows: draft the contract from real rows")
    empty = df.index[df[target].isna()].tolist()
    if empty:
        raise ContractInferenceError(
            f"the label column {target!r} is empty in {len(empty)} row(s) (e.g. row {empty[0]}): label every row"
        )
    classes = pd.unique(df[target]).tolist()
    if len(classes) < 2:
        raise ContractInferenceError(
            f"the label column {target!r} has one class ({classes[0]!r}): a classifier needs at least two; draft "
            "from a sample with every class"
        )
    if len(df.columns) < 2:
        raise ContractInferenceError(f"the sample has no feature column besides the label {target!r}")


def _infer_feature(column: str, raw: pd.Series, margin: float) -> FeatureSpec:
    """One feature's spec: numeric values only, the observed range widened by ``margin`` of its span (rounded
    outwards, so the sample's extremes stay inside), nullable when a cell is empty."""
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    text = raw[values.isna() & raw.notna()]
    if len(text):
        raise ContractInferenceError(
            f"column {column!r} is not numeric (row {text.index[0]}: {text.iloc[0]!r}): the contract takes numbers "
            "only; encode it or drop it from the sample"
        )
    if values.isna().all():
        raise ContractInferenceError(f"column {column!r} is empty in every row: drop it from the sample")
    low, high = float(values.min()), float(values.max())
    span = (high - low) or 1.0
    return FeatureSpec(
        name=column,
        min=_rounded(low - margin * span, down=True),
        max=_rounded(high + margin * span, down=False),
        nullable=bool(values.isna().any()),
    )


def _rounded(value: float, down: bool, digits: int = 6) -> float:
    """``value`` to ``digits`` decimals, never past it inwards (a bound must not exclude the value it came from)."""
    rounded = round(value, digits)
    step = 10.0**-digits
    if down and rounded > value:
        return rounded - step
    if not down and rounded < value:
        return rounded + step
    return rounded


def dump_contract(contract: DataContract, header: str) -> str:
    """YAML text of a contract, with a comment header saying where it came from."""
    body = yaml.safe_dump(contract.model_dump(exclude_none=True), sort_keys=False, allow_unicode=True)
    return f"# {header}\n{body}"
