"""The data contract (a YAML file in the repo) and its enforcement with pandera.

The contract names every feature with its dtype, range and nullability, the target with its allowed labels,
and table-level limits (minimum rows, duplicate share). Column order does not matter; extra columns fail.
"""

from __future__ import annotations

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
    """Read a YAML data contract; a malformed one fails with the file name and the bad keys."""
    path = Path(path)
    if not path.is_file():
        raise SchemaFileError(f"{path}: schema file not found (set data.schema in params.yaml or --schema)")
    try:
        return DataContract.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise SchemaFileError(f"{path}: not a valid data contract: {exc}") from exc


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


def to_pandera(contract: DataContract) -> Any:
    """The pandera DataFrameSchema enforcing the contract (strict columns, any order)."""
    import pandera.pandas as pa

    columns = {spec.name: _feature_column(spec) for spec in contract.features}
    labels = contract.target.labels
    label_dtype = "int64" if all(isinstance(v, int) for v in labels) else "str"
    columns[contract.target.name] = pa.Column(
        label_dtype, checks=[pa.Check.isin(labels)], nullable=False, coerce=True, required=True
    )
    return pa.DataFrameSchema(columns, checks=_table_checks(contract), strict=True, ordered=False, name=contract.name)


def infer_contract(df: pd.DataFrame, target: str, name: str, margin: float = 0.1) -> DataContract:
    """Draft a contract from a trusted sample: observed ranges widened by ``margin`` of their span."""
    if target not in df.columns:
        raise SchemaFileError(f"target column {target!r} not in data (columns: {list(df.columns)[:10]}...)")
    features = []
    for column in df.columns.drop(target):
        values = pd.to_numeric(df[column], errors="raise").astype("float64")
        span = float(values.max() - values.min()) or 1.0
        features.append(
            FeatureSpec(
                name=str(column),
                min=round(float(values.min()) - margin * span, 6),
                max=round(float(values.max()) + margin * span, 6),
            )
        )
    labels = sorted(pd.unique(df[target]).tolist())
    labels = [int(v) if isinstance(v, (int, np.integer)) else str(v) for v in labels]
    return DataContract(
        name=name,
        features=features,
        target=TargetSpec(name=target, labels=labels),
        min_rows=max(10, len(df) // 20),
        max_duplicate_fraction=0.05,
    )


def dump_contract(contract: DataContract, header: str) -> str:
    """YAML text of a contract, with a comment header saying where it came from."""
    body = yaml.safe_dump(contract.model_dump(exclude_none=True), sort_keys=False, allow_unicode=True)
    return f"# {header}\n{body}"
