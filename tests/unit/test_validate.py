"""The data contract catches every kind of broken file and reports column, check and examples."""

from __future__ import annotations

import json
import re
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


def test_a_binary_or_non_mapping_schema_file_is_named_in_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "schema.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(SchemaFileError, match="not a text file"):
        load_contract(binary)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SchemaFileError, match="not a data contract"):
        load_contract(listing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures: []\ntarget: {name: y, labels: [0]}\n")
    with pytest.raises(SchemaFileError) as raised:
        load_contract(bad)
    assert "\n" not in str(raised.value) and "errors.pydantic.dev" not in str(raised.value)
    assert "features: List should have at least 1 item" in str(raised.value)


def sample(rows: int = 30) -> pd.DataFrame:
    """A small labelled sample: two features, two classes."""
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(rows)]
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.uniform(0, 1, size=rows), "label": labels})


def test_a_column_with_an_empty_cell_is_nullable_in_the_draft() -> None:
    df = sample()
    df.loc[3, "b"] = np.nan
    contract = infer_contract(df, "label", "s")
    assert {f.name: f.nullable for f in contract.features} == {"a": False, "b": True}
    assert validate_frame(df, contract).valid


@pytest.mark.parametrize("margin", [0.0, 0.1, 2.0])
def test_a_draft_accepts_its_own_sample_at_any_margin(margin: float) -> None:
    """Bounds rounded to six decimals are rounded outwards, so margin 0 keeps the extremes inside."""
    df = sample(7)  # tiny: min_rows no higher than the sample
    df["b"] += 0.2
    df.loc[0, "b"], df.loc[1, "b"] = 0.1234567, 1.9876543  # nearest six decimals: just inside the extremes
    df.loc[len(df)] = df.loc[1]  # a duplicate row: more than 5 % of seven
    contract = infer_contract(df, "label", "s", margin=margin)
    assert contract.min_rows <= len(df) and validate_frame(df, contract).valid


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda df: df.drop(columns=["label"]), "no column 'label'"),
        (lambda df: df.assign(label=0), "one class"),
        (lambda df: df.assign(label=[None] + [1] * (len(df) - 1)), "empty in 1 row(s)"),
        (lambda df: df.assign(a=["x"] + [1.0] * (len(df) - 1)), "column 'a' is not numeric"),
        (lambda df: df.assign(a=np.nan), "column 'a' is empty in every row"),
        (lambda df: df.iloc[0:0], "no rows"),
        (lambda df: df[["label"]], "no feature column"),
    ],
)
def test_a_sample_no_contract_can_be_drafted_from_is_named(change, said: str) -> None:
    from pipelines.schema import ContractInferenceError

    with pytest.raises(ContractInferenceError, match=re.escape(said)):
        infer_contract(change(sample()), "label", "s")


@pytest.mark.parametrize("margin", [-0.01, -0.6, float("nan"), float("inf")])
def test_a_negative_margin_is_refused(margin: float) -> None:
    """A negative margin narrows each range below the sample's own values (past -0.5, min above max)."""
    from pipelines.schema import ContractInferenceError

    with pytest.raises(ContractInferenceError, match="margin"):
        infer_contract(sample(), "label", "s", margin=margin)


def test_a_draft_its_sample_fails_is_not_written(tmp_path: Path) -> None:
    """The last guard: the draft is checked against its sample before it is written (inf passes inference)."""
    from pipelines.draft import DraftRejectsSample, draft_contract

    path, out = tmp_path / "s.csv", tmp_path / "s.yaml"
    sample().assign(b=[np.inf] + [0.5] * 29).to_csv(path, index=False)
    with pytest.raises(DraftRejectsSample, match="column 'b' fails finite"):
        draft_contract(path, "label", out, margin=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]  # no contract, no temporary file
    sample().to_csv(path, index=False)
    contract = draft_contract(path, "label", out, margin=0.1)
    assert load_contract(out) == contract and validate_file(path, contract).valid


def test_a_draft_goes_only_into_an_existing_folder(tmp_path: Path) -> None:
    from pipelines.draft import DraftPathError, draft_contract

    path = tmp_path / "s.csv"
    sample().to_csv(path, index=False)
    with pytest.raises(DraftPathError, match="does not exist"):
        draft_contract(path, "label", tmp_path / "no" / "s.yaml", margin=0.1)
    with pytest.raises(DraftPathError, match="is a folder"):
        draft_contract(path, "label", tmp_path, margin=0.1)
