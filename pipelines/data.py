"""Loading a data source named in params.yaml: a CSV, a Parquet file, or a `.sklearn` loader file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SKLEARN_LOADERS = ("load_breast_cancer", "load_wine", "load_digits", "load_iris")


class DataSourceError(ValueError):
    """The data source cannot be read as a table; the message says why and what to do (the CLI prints it as one
    line, exit 2: mlrelease.cli.explain)."""


def _load_sklearn(path: Path, target: str) -> pd.DataFrame:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or lines[0] not in SKLEARN_LOADERS:
        raise DataSourceError(f"{path}: expected one loader name out of {SKLEARN_LOADERS}, got {lines}")
    from sklearn import datasets

    bunch = getattr(datasets, lines[0])(as_frame=True)
    frame = bunch.frame.copy()
    return frame.rename(columns={"target": target}) if target != "target" else frame


def _require_text(path: Path, probe_bytes: int = 8192) -> None:
    """A CSV is text: a NUL byte near the start means a binary file (pandas would report a tokenizing error)."""
    with path.open("rb") as handle:
        if b"\0" in handle.read(probe_bytes):
            raise DataSourceError(f"{path}: a binary file, not a text CSV: save the data as UTF-8 CSV or as Parquet")


def load_source(source: str | Path, target: str) -> pd.DataFrame:
    """Read the raw table; an unreadable, empty or header-only file raises DataSourceError."""
    path = Path(source)
    if not path.is_file():
        raise DataSourceError(f"{path}: data file not found (set data.source in params.yaml)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".sklearn":
            return _load_sklearn(path, target)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".csv", ".txt"}:
            _require_text(path)
            return pd.read_csv(path)
    except DataSourceError:
        raise  # already says what is wrong
    except pd.errors.EmptyDataError as exc:
        raise DataSourceError(f"{path}: the file is empty (no header, no rows)") from exc
    except UnicodeDecodeError as exc:
        raise DataSourceError(
            f"{path}: not a text {suffix[1:]} file (binary, or not UTF-8): save the data as UTF-8 CSV or as Parquet"
        ) from exc
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataSourceError(
            f"{path}: cannot be parsed as {suffix[1:]} ({exc}): check that it is a {suffix[1:]} file with a header row"
        ) from exc
    raise DataSourceError(f"{path}: unsupported file type {suffix!r}; use .csv, .parquet or .sklearn")
