"""prepare: deterministic stratified splits, contract order, clear errors for unusable data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlrelease.core.params import load_params
from pipelines.prepare import prepare
from pipelines.schema import load_contract
from pipelines.validate import DataValidationError
from tests.bad_data import good_frame

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
CONTRACT = load_contract(REPO / "schemas" / "breast_cancer.yaml")


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    df = good_frame()
    first = prepare(df, CONTRACT, PARAMS.data, seed=42)
    second = prepare(df.sample(frac=1.0, random_state=0).sort_index(), CONTRACT, PARAMS.data, seed=42)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(first[name], second[name])
    sizes = {k: len(v) for k, v in first.items()}
    assert sum(sizes.values()) == len(df)
    assert abs(sizes["test"] - 0.2 * len(df)) <= 1
    overall = df["target"].mean()
    for frame in first.values():
        assert abs(frame["target"].mean() - overall) < 0.02
    keys = [set(map(tuple, f.round(8).to_numpy().tolist())) for f in first.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2])


def test_other_seed_gives_other_split() -> None:
    a = prepare(good_frame(), CONTRACT, PARAMS.data, seed=1)["test"]
    b = prepare(good_frame(), CONTRACT, PARAMS.data, seed=2)["test"]
    assert not a.equals(b)


def test_columns_follow_the_contract_order() -> None:
    df = good_frame()
    out = prepare(df[list(reversed(df.columns))], CONTRACT, PARAMS.data, seed=42)
    assert list(out["train"].columns) == [*CONTRACT.feature_names, "target"]


def test_raw_data_is_checked_before_splitting() -> None:
    with pytest.raises(DataValidationError, match="mean radius"):
        prepare(good_frame().drop(columns=["mean radius"]), CONTRACT, PARAMS.data, seed=42)


def test_a_class_too_small_to_split_is_named() -> None:
    df = good_frame()
    minority = df[df["target"] == 0].index[2:]
    with pytest.raises(DataValidationError, match="stratifiable|only 2 row"):
        prepare(df.drop(index=minority), CONTRACT, PARAMS.data, seed=42)


def test_params_typo_fails_fast(tmp_path: Path) -> None:
    from mlrelease.core.params import ParamsError

    text = (REPO / "params.yaml").read_text().replace("max_epochs:", "max_epoch:")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match="max_epoch"):
        load_params(tmp_path / "params.yaml")


def test_gate_thresholds_below_the_floor_are_refused(tmp_path: Path) -> None:
    from mlrelease.core.params import ParamsError

    text = (REPO / "params.yaml").read_text().replace("min_accuracy: 0.95", "min_accuracy: 0.5")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match="min_accuracy"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.integration  # starts a process
def test_a_config_mistake_ends_the_stage_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    """params.yaml's target and the contract's disagree: the stage names both, writes nothing, exits 1."""
    import subprocess
    import sys

    text = (REPO / "params.yaml").read_text().replace("target: target ", "target: label  ")
    text = text.replace("schemas/breast_cancer.yaml", str(REPO / "schemas" / "breast_cancer.yaml"))
    text = text.replace("datasets/breast_cancer.sklearn", str(REPO / "datasets" / "breast_cancer.sklearn"))
    (tmp_path / "params.yaml").write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--out", "out", "--report", "report.json"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "params.yaml data.target is 'label' but" in proc.stderr and "names the target 'target'" in proc.stderr
    assert "Fix that file, then `dvc repro`." in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()
