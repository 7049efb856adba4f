"""The staging load gate's payload: the home's test split when it fits the version, else the version's own rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from deploy.loadtest.runner import write_gate_rows
from mlrelease.core.modelcard import ModelCard
from tests.serving_helpers import make_bundle, write_test_csv


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("gate") / "bundle", epochs=2)


def _read(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def load_rows(path: Path, target: str) -> list[list[float]]:
    """Feature rows as the locustfile reads them (it cannot be imported here: Locust patches the runtime)."""
    header, *rows = _read(path)
    keep = [i for i, name in enumerate(header) if name != target]
    return [[float(row[i]) for i in keep] for row in rows]


def test_test_split_rows_are_sent_in_the_cards_feature_order(bundle: Path, tmp_path: Path) -> None:
    names = ModelCard.read(bundle).feature_names
    split = write_test_csv(tmp_path / "test.csv", target="diagnosis", rows=40)
    shuffled = tmp_path / "shuffled.csv"
    rows = _read(split)
    order = [*reversed(range(len(rows[0])))]  # target first, features reversed
    with shuffled.open("w", newline="") as handle:
        csv.writer(handle).writerows([[row[i] for i in order] for row in rows])
    out = tmp_path / "rows.csv"
    source = write_gate_rows(bundle, shuffled, "diagnosis", 500, out)
    assert source == f"40 rows from the test split {shuffled}"
    assert load_rows(out, "diagnosis") == load_rows(split, "diagnosis")  # same rows, card order
    assert _read(out)[0] == [*names, "diagnosis"]


@pytest.mark.parametrize("split", ["missing", "lacks a feature", "empty"])
def test_without_a_usable_split_rows_come_from_the_versions_reference_statistics(
    bundle: Path, tmp_path: Path, split: str
) -> None:
    test_csv = tmp_path / "test.csv"
    if split != "missing":
        write_test_csv(test_csv, target="diagnosis", rows=0 if split == "empty" else 30)
    if split == "lacks a feature":
        rows = _read(test_csv)
        with test_csv.open("w", newline="") as handle:
            csv.writer(handle).writerows([row[1:] for row in rows])
    out = tmp_path / "rows.csv"
    source = write_gate_rows(bundle, test_csv, "diagnosis", 64, out)
    assert source == f"64 rows from the version's reference statistics (no usable test split at {test_csv})"
    rows = load_rows(out, "diagnosis")
    assert len(rows) == 64 and all(len(row) == len(ModelCard.read(bundle).feature_names) for row in rows)
    assert len({tuple(row) for row in rows}) == 64  # drawn, not one row repeated
