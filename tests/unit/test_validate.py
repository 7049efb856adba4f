"""The data contract catches every kind of broken file and reports column, check and examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.schema import SchemaFileError, infer_contract, load_contract
from pipelines.validate import reference_stats, validate_file, validate_frame
from tests.bad_data import CASES, good_frame

REPO = Path(__file__).resolve().parents[2]
CONTRACT = load_contract(REPO / "schemas" / "breast_cancer.yaml")


def test_default_data_satisfies_contract() -> None:
    assert validate_frame(good_frame(), CONTRACT).valid


def test_column_order_does_not_matter() -> None:
    df = good_frame()
    shuffled = df[list(reversed(df.columns))]
    assert validate_frame(shuffled, CONTRACT).valid


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_file_is_reported(case, tmp_path: Path) -> None:
    path = tmp_path / f"{case.name}.csv"
    case.make(path)
    result = validate_file(path, CONTRACT)
    assert not result.valid
    hits = [f for f in result.failures if f["column"] == case.column and case.check in f["check"]]
    assert hits, f"expected {case.column}/{case.check} in {result.failures}"
    assert hits[0]["count"] >= 1


def test_examples_name_rows_and_values(tmp_path: Path) -> None:
    df = good_frame()
    df.loc[[5, 9], "mean radius"] = -1.0
    result = validate_frame(df, CONTRACT)
    failure = next(f for f in result.failures if f["column"] == "mean radius")
    assert {ex["row"] for ex in failure["examples"]} == {5, 9}
    assert all(ex["value"] == -1.0 and ex["data"]["mean radius"] == -1.0 for ex in failure["examples"])


def test_every_failure_is_collected_not_just_the_first() -> None:
    df = good_frame().drop(columns=["mean area"])
    df.loc[0, "mean radius"] = -3.0
    df.loc[1, "target"] = 9
    columns = {f["column"] for f in validate_frame(df, CONTRACT).failures}
    assert {"mean area", "mean radius", "target"} <= columns


def test_malformed_schema_file_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures: []\ntarget: {name: y, labels: [0, 1]}\n")
    with pytest.raises(SchemaFileError, match="bad.yaml"):
        load_contract(bad)
    with pytest.raises(SchemaFileError, match="not found"):
        load_contract(tmp_path / "missing.yaml")


def test_infer_contract_accepts_its_own_sample() -> None:
    from sklearn.datasets import load_wine

    df = load_wine(as_frame=True).frame
    contract = infer_contract(df, "target", "wine")
    assert contract.target.labels == [0, 1, 2]
    assert validate_frame(df, contract).valid
    df.loc[0, "alcohol"] = 1e6
    assert not validate_frame(df, contract).valid


def test_reference_stats_bins_cover_training_data() -> None:
    df = good_frame()
    stats = reference_stats(df, CONTRACT.feature_names, bins=10)
    ref = stats.features["mean radius"]
    assert len(ref.edges) == len(ref.fractions) + 1
    assert np.isclose(sum(ref.fractions), 1.0)
    assert max(ref.fractions) < 0.2  # quantile bins: roughly a tenth each
    assert stats.n_rows == len(df)


@pytest.mark.integration  # starts a process
def test_validate_data_cli_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good_frame().to_csv(good, index=False)
    good_frame().drop(columns=["mean radius"]).to_csv(bad, index=False)
    schema = str(REPO / "schemas" / "breast_cancer.yaml")
    cli = [sys.executable, "-m", "mlrelease.cli"]
    ok = subprocess.run([*cli, "validate-data", str(good), "--schema", schema], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = tmp_path / "r.json"
    fail = subprocess.run(
        [*cli, "validate-data", str(bad), "--schema", schema, "--report", str(report)], capture_output=True, text=True
    )
    assert fail.returncode == 1
    assert "mean radius" in fail.stderr and "column_in_dataframe" in fail.stderr
    assert json.loads(report.read_text())["valid"] is False
    missing = subprocess.run([*cli, "validate-data", "my.csv", "--schema", schema], capture_output=True, text=True)
    said = " ".join(missing.stderr.split())
    assert missing.returncode == 2 and "my.csv: no such file" in said and "params.yaml" not in said, said


def test_parquet_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    good_frame().to_parquet(path)
    assert validate_file(path, CONTRACT).valid
    pd.read_parquet(path)


def test_a_column_added_or_dropped_is_said_in_the_contracts_terms() -> None:
    result = validate_frame(good_frame().drop(columns=["mean area"]).assign(extra=1.0), CONTRACT)
    messages = {f["check"]: f["message"] for f in result.failures}
    assert messages == {
        "column_in_schema": "the data has a column the contract does not list: add 'extra' to the contract's "
        "features, or drop it from the data source",
        "column_in_dataframe": "the contract lists 'mean area', the data has no such column: add it to the data, "
        "or remove it from the contract (a model trained without it is a new input contract)",
    }
    unlabelled = validate_frame(good_frame().drop(columns=["target"]), CONTRACT)
    assert [f["message"] for f in unlabelled.failures] == [
        "the data has no label column 'target' (the contract's target): a labelled table is needed here; check "
        "data.target in params.yaml and the contract's target name"
    ]
