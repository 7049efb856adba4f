"""Stage `validate`: every split must satisfy the data contract; saves per-feature reference statistics.

A violation fails the stage (exit 1) with a report naming every failing column and check and a few example
rows, in `reports/data_validation.json` and as readable text on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlrelease.core.modelcard import FeatureReference, ReferenceStats
from pipelines.data import DataSourceError, load_source
from pipelines.schema import MAX_EXAMPLES, DataContract, import_pandera, load_contract, to_pandera

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    """Outcome of checking one table against the contract."""

    name: str
    rows: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "valid": self.valid, "failures": self.failures}


class DataValidationError(ValueError):
    """Data broke the contract; ``results`` hold every failure."""

    def __init__(self, results: list[ValidationResult]) -> None:
        self.results = results
        super().__init__(format_results(results))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


COLUMN_PRESENCE_CHECKS = ("column_in_dataframe", "column_in_schema")


def _column_of(case: dict[str, Any]) -> str:
    """The column a failure is about: for presence checks the failure case *is* the column name."""
    if str(case.get("check")) in COLUMN_PRESENCE_CHECKS:
        return str(case["failure_case"])
    if case.get("schema_context") == "DataFrameSchema" or case.get("column") is None:
        return "<table>"
    return str(case["column"])


# pandera's checks of the table's shape, said in the contract's terms (the value alone, the column's name, says little)
STRUCTURAL = {
    "column_in_schema": "the data has a column the contract does not list: add {column!r} to the contract's "
    "features, or drop it from the data source",
    "column_in_dataframe": "the contract lists {column!r}, the data has no such column: add it to the data, or "
    "remove it from the contract (a model trained without it is a new input contract)",
}
NO_TARGET = (
    "the data has no label column {column!r} (the contract's target): a labelled table is needed here; check "
    "data.target in params.yaml and the contract's target name"
)


def _summarize(cases: pd.DataFrame, df: pd.DataFrame, target: str | None = None) -> list[dict[str, Any]]:
    """Group pandera failure cases by column and check, with a few example values and rows."""
    failures = []
    cases = cases.assign(column=[_column_of(c) for c in cases.to_dict("records")], check=cases["check"].astype(str))
    for (column, check), group in cases.groupby(["column", "check"], sort=True, dropna=False):
        examples = []
        for _, case in group.head(MAX_EXAMPLES).iterrows():
            index = case.get("index")
            row = None
            if index is None or pd.isna(index):
                index = None
            elif index in df.index:
                row = {str(k): _jsonable(v) for k, v in df.loc[index].items()}
            examples.append({"row": _jsonable(index), "value": _jsonable(case["failure_case"]), "data": row})
        failure = {"column": str(column), "check": str(check), "count": len(group), "examples": examples}
        if str(check) == "column_in_dataframe" and column == target:
            failure["message"] = NO_TARGET.format(column=column)
        elif str(check) in STRUCTURAL:
            failure["message"] = STRUCTURAL[str(check)].format(column=column)
        failures.append(failure)
    return failures


def validate_frame(df: pd.DataFrame, contract: DataContract, name: str = "data") -> ValidationResult:
    """Check a table against the contract; collect every failure (lazy), never stop at the first."""
    import_pandera()  # first: quietly
    import pandera.errors

    result = ValidationResult(name=name, rows=len(df))
    try:
        to_pandera(contract).validate(df, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        result.failures = _summarize(exc.failure_cases, df, contract.target.name)
    return result


def validate_file(path: str | Path, contract: DataContract) -> ValidationResult:
    """Load any CSV/Parquet file and check it; an unreadable file is one failure, not a crash."""
    try:
        df = load_source(path, contract.target.name)
    except DataSourceError as exc:
        failure = {"column": "<file>", "check": "readable", "count": 1, "message": str(exc), "examples": []}
        return ValidationResult(name=str(path), rows=0, failures=[failure])
    return validate_frame(df, contract, name=str(path))


def format_results(results: list[ValidationResult]) -> str:
    """Readable text of the failures, for stderr and exception messages."""
    lines = []
    for res in results:
        if res.valid:
            continue
        lines.append(f"{res.name}: {len(res.failures)} failing check(s) in {res.rows} rows")
        for fail in res.failures:
            shown = ", ".join(f"row {ex['row']}: {ex['value']!r}" for ex in fail["examples"][:3])
            detail = fail.get("message") or shown
            lines.append(f"  - column {fail['column']!r}, check {fail['check']}: {fail['count']} case(s); {detail}")
    if lines:
        lines.append("Fix the data or, if the change is intended, update the schema file (data.schema).")
    return "\n".join(lines)


def reference_stats(train: pd.DataFrame, feature_names: list[str], bins: int) -> ReferenceStats:
    """Quantile bin edges and bin fractions per feature of the training split, for drift scores at serving."""
    features = {}
    for name in feature_names:
        values = train[name].to_numpy(dtype="float64")
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            edges = np.array([values.min(), values.min() + 1.0])
        idx = np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, len(edges) - 2)
        counts = np.bincount(idx, minlength=len(edges) - 1)
        features[name] = FeatureReference(
            edges=edges.tolist(),
            fractions=(counts / counts.sum()).tolist(),
            mean=float(values.mean()),
            std=float(values.std()),
            min=float(values.min()),
            max=float(values.max()),
        )
    return ReferenceStats(n_rows=len(train), features=features)


def write_report(results: list[ValidationResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"valid": all(r.valid for r in results), "tables": [r.as_dict() for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """DVC entry point: validate the prepared splits, write the report and the reference statistics."""
    from mlrelease.core.params import load_params

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    contract = load_contract(params.data.schema_path)
    results = [validate_file(args.splits / f"{split}.csv", contract) for split in ("train", "val", "test")]
    write_report(results, args.report)
    if not all(r.valid for r in results):
        sys.stderr.write(format_results(results) + "\n")
        return 1
    train = pd.read_csv(args.splits / "train.csv")
    stats = reference_stats(train, contract.feature_names, params.data.reference_bins)
    args.reference.parent.mkdir(parents=True, exist_ok=True)
    args.reference.write_text(stats.model_dump_json(indent=2) + "\n")
    log.info("validate: %s rows checked, all splits valid", sum(r.rows for r in results))
    return 0


if __name__ == "__main__":
    from mlrelease.core.params import run_stage

    sys.exit(run_stage("validate", main))
