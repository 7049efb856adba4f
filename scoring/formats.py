"""Files in and out of batch scoring: the format by extension, chunked readers, and writers that appear whole.

Readers yield pandas chunks (CSV through pandas' chunked reader, Parquet through pyarrow's record batches), so a
file of any size is read in bounded memory. CSV key columns are read as text (a CSV has no types, and a key must
keep one type across chunks); Parquet columns keep theirs. Writers write into a hidden file next to the target and
move it into place when the run ends, so a failed run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mlrelease.core.errors import UserError

Format = Literal["csv", "parquet"]
SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class ScoringInputError(UserError):
    """A file, option or column the user named is wrong: the message says which, and what to do."""


def file_format(path: Path, role: str) -> Format:
    """The format of ``path`` by its extension (``role``: "--input", "--output", for the message)."""
    name = path.name.lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    known = ", ".join(SUFFIXES)
    raise ScoringInputError(f"{role} {path}: unknown format; name the file with one of {known}")


def default_rejects(output: Path) -> Path:
    """Where rejected rows go when ``--rejects`` is not given: next to the output, in its format
    (``scores.csv`` -> ``scores.rejects.csv``)."""
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def columns_of(path: Path, kind: Format) -> list[str]:
    """The input's column names, read from the header (CSV) or the footer (Parquet) only."""
    try:
        if kind == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return [str(name) for name in pq.ParquetFile(path).schema_arrow.names]
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ScoringInputError(f"--input {path}: cannot read it as {kind}: {' '.join(str(exc).split())}") from exc


def row_count(path: Path, kind: Format) -> int | None:
    """Rows in the input when the file says so cheaply (a Parquet footer); None for CSV."""
    if kind != "parquet":
        return None
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def read_chunks(path: Path, kind: Format, columns: list[str], text: list[str], rows: int) -> Iterator[pd.DataFrame]:
    """``columns`` of the input, ``rows`` at a time; ``text`` columns read as strings from a CSV."""
    if kind == "csv":
        dtypes: dict[str, Any] = {name: str for name in text}
        with pd.read_csv(path, usecols=columns, dtype=dtypes, chunksize=rows, keep_default_na=True) as reader:
            for chunk in reader:
                yield chunk.reset_index(drop=True)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
        yield batch.to_pandas()


@dataclass
class TableWriter:
    """Appends pandas chunks to one CSV or Parquet file, written under a hidden name until :meth:`commit`."""

    path: Path
    kind: Format
    columns: list[str]
    written: int = 0
    _handle: Any = None
    _parquet: Any = None
    _schema: Any = None

    @property
    def partial(self) -> Path:
        return self.path.with_name(f".{self.path.name}.partial")

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (its columns in :attr:`columns` order). Rows decide a Parquet file's column types, so
        nothing is written until a chunk has some (see :meth:`commit`)."""
        if frame.empty and self._handle is None and self._parquet is None:
            return
        self._append(frame[self.columns])

    def _append(self, frame: pd.DataFrame) -> None:
        if self.kind == "csv":
            self._write_csv(frame)
        else:
            self._write_parquet(frame)
        self.written += len(frame)

    def _write_csv(self, frame: pd.DataFrame) -> None:
        first = self._handle is None
        if first:
            self._handle = self.partial.open("w", newline="", encoding="utf-8")
        frame.to_csv(self._handle, header=first, index=False)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        if self._parquet is None:
            self._schema = table.schema.remove_metadata()
            table = table.replace_schema_metadata(None)
            self._parquet = pq.ParquetWriter(self.partial, self._schema)
        self._parquet.write_table(table)

    def commit(self, empty: pd.DataFrame) -> None:
        """Close the file and move it into place; ``empty`` (the columns, no rows) gives a file with no rows a
        header or schema."""
        if self._handle is None and self._parquet is None:
            self._append(empty[self.columns])
        if self._handle is not None:
            self._handle.close()
        if self._parquet is not None:
            self._parquet.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Close and remove the hidden file (the run failed)."""
        for closer in (self._handle, self._parquet):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self.partial.unlink(missing_ok=True)
