"""Stage `prepare`: load the raw data, check it against the contract, write a seeded stratified split.

The raw table is checked before splitting, so a broken file fails here with the full report instead of
an obscure error from the splitter; columns are put in the contract's order.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from mlrelease.core.params import DataParams, load_params, run_stage
from pipelines.data import DataSourceError, load_source
from pipelines.schema import DataContract, SchemaFileError, load_contract
from pipelines.validate import (
    DataValidationError,
    ValidationResult,
    format_results,
    validate_frame,
    write_report,
)

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def split_frame(df: pd.DataFrame, target: str, test_size: float, val_size: float, seed: int) -> dict[str, pd.DataFrame]:
    """Deterministic stratified train/val/test split; sizes are fractions of the whole table."""
    rest, test = train_test_split(df, test_size=test_size, random_state=seed, stratify=df[target])
    val_share = val_size / (1.0 - test_size)
    train, val = train_test_split(rest, test_size=val_share, random_state=seed, stratify=rest[target])
    return {
        "train": train.reset_index(drop=True),
        "val": val.reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }


def _check_splittable(df: pd.DataFrame, target: str) -> None:
    smallest = int(df[target].value_counts().min())
    if smallest < 3:
        raise DataValidationError(
            [
                ValidationResult(
                    name="raw",
                    rows=len(df),
                    failures=[
                        {
                            "column": target,
                            "check": "stratifiable",
                            "count": 1,
                            "examples": [],
                            "message": f"a class has only {smallest} row(s); "
                            "each class needs >= 3 to fill train, val and test",
                        }
                    ],
                )
            ]
        )


def prepare(raw: pd.DataFrame, contract: DataContract, data: DataParams, seed: int) -> dict[str, pd.DataFrame]:
    """Validate the raw table, order its columns as the contract does, and split it."""
    result = validate_frame(raw, contract, name=str(data.source))
    if not result.valid:
        raise DataValidationError([result])
    ordered = raw[[*contract.feature_names, contract.target.name]]
    _check_splittable(ordered, contract.target.name)
    return split_frame(ordered, contract.target.name, data.test_size, data.val_size, seed)


def main(argv: list[str] | None = None) -> int:
    """DVC entry point: read params, load the source, write data/prepared/{train,val,test}.csv."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    contract = load_contract(params.data.schema_path)
    if contract.target.name != params.data.target:
        raise SchemaFileError(
            f"params.yaml data.target is {params.data.target!r} but {params.data.schema_path} names the target "
            f"{contract.target.name!r}: make the two the same"
        )
    try:
        raw = load_source(params.data.source, params.data.target)
        splits = prepare(raw, contract, params.data, params.seed)
    except DataSourceError as exc:
        failure = {"column": "<file>", "check": "readable", "count": 1, "message": str(exc), "examples": []}
        err = DataValidationError([ValidationResult(name=str(params.data.source), rows=0, failures=[failure])])
        write_report(err.results, args.report)
        sys.stderr.write(format_results(err.results) + "\n")
        return 1
    except DataValidationError as exc:
        write_report(exc.results, args.report)
        sys.stderr.write(format_results(exc.results) + "\n")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
    log.info("prepare: %s", {name: len(frame) for name, frame in splits.items()})
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("prepare", main))
