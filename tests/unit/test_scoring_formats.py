"""Batch scoring's files: the format by extension, chunked readers, and writers whose output appears whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from scoring.formats import ScoringInputError, TableWriter, default_rejects, file_format, read_chunks


def test_the_format_comes_from_the_extension() -> None:
    assert file_format(Path("a.CSV"), "--input") == "csv"
    assert file_format(Path("d/a.parquet"), "--input") == "parquet" and file_format(Path("a.pq"), "x") == "parquet"
    with pytest.raises(ScoringInputError, match=r"--output a\.json: unknown format; name the file with one of"):
        file_format(Path("a.json"), "--output")
    assert default_rejects(Path("out/scores.parquet")) == Path("out/scores.rejects.parquet")


def test_a_csv_is_read_in_chunks_with_its_keys_as_text(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    pd.DataFrame({"id": [f"{i:03d}" for i in range(10)], "x": range(10), "skip": 1}).to_csv(path, index=False)
    chunks = list(read_chunks(path, "csv", ["id", "x"], ["id"], rows=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert list(chunks[0].columns) == ["id", "x"] and chunks[0]["id"].tolist() == ["000", "001", "002", "003"]
    assert chunks[2].index.tolist() == [0, 1]  # each chunk's own index: positions, not file rows


def test_a_parquet_file_is_read_in_record_batches(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pd.DataFrame({"id": range(10), "x": [float(i) for i in range(10)]}).to_parquet(path, row_group_size=3)
    chunks = list(read_chunks(path, "parquet", ["x"], [], rows=4))
    assert sum(len(c) for c in chunks) == 10 and max(len(c) for c in chunks) <= 4
    assert pd.concat(chunks)["x"].tolist() == [float(i) for i in range(10)]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_writer_appends_chunks_and_shows_the_file_only_when_committed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"out.{kind}"
    writer = TableWriter(path, kind, ["k", "p"])  # type: ignore[arg-type]
    writer.write(pd.DataFrame({"p": [0.5], "k": ["a"]}))
    writer.write(pd.DataFrame({"k": pd.Series([], dtype=object), "p": pd.Series([], dtype=float)}))
    writer.write(pd.DataFrame({"k": ["b", "c"], "p": [0.25, 1.0]}))
    assert not path.exists() and writer.written == 3
    writer.commit(pd.DataFrame({"k": [], "p": []}))
    back = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    assert back.to_dict("list") == {"k": ["a", "b", "c"], "p": [0.5, 0.25, 1.0]}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_an_output_without_rows_still_has_its_columns(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"none.{kind}"
    writer = TableWriter(path, kind, ["k", "reason"])  # type: ignore[arg-type]
    writer.write(pd.DataFrame({"k": [], "reason": []}))
    writer.commit(pd.DataFrame({"k": [], "reason": []}))
    back = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    assert list(back.columns) == ["k", "reason"] and back.empty


def test_a_discarded_writer_leaves_nothing(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path / "out.parquet", "parquet", ["k"])
    writer.write(pd.DataFrame({"k": [1, 2]}))
    writer.discard()
    assert list(tmp_path.iterdir()) == []
