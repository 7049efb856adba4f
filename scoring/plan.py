"""What a batch-scoring run is asked to do and what it did: the job, the checked plan, the result; and the checks
of files, columns and keys that need no registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scoring.contract import ScoringContract
from scoring.formats import Format, ScoringInputError, columns_of, default_rejects, file_format
from scoring.model import VersionRef

Engine = Literal["local", "spark"]
ROW_KEY = "row"  # the key column when the input has none of its own: the row's position in the file, from 0


@dataclass(frozen=True)
class ScoreJob:
    """What the user asked for (``keys`` empty: the default keys)."""

    model: str
    input: Path
    output: Path
    rejects: Path | None = None
    keys: tuple[str, ...] = ()
    engine: Engine = "local"
    master: str = "local[2]"
    chunk_rows: int = 50_000
    schema: Path | None = None

    @property
    def rejects_path(self) -> Path:
        return self.rejects or default_rejects(self.output)


@dataclass(frozen=True)
class ScorePlan:
    """A checked job: formats, the version, its contract, and the key columns the outputs carry."""

    job: ScoreJob
    input_format: Format
    output_format: Format
    columns: list[str]
    ref: VersionRef
    contract: ScoringContract
    keys: list[str]
    classes: list[str]

    @property
    def row_key(self) -> bool:
        """Whether the key is the row's position (the input has no key column of its own)."""
        return self.keys == [ROW_KEY] and ROW_KEY not in self.columns

    @property
    def read_columns(self) -> list[str]:
        """The input columns an engine reads: the keys (unless positional) and the features, once each."""
        wanted = ([] if self.row_key else self.keys) + self.contract.feature_names
        return list(dict.fromkeys(wanted))

    def output_columns(self) -> list[str]:
        """Keys, the predicted class, one probability per class, and who answered."""
        return [*self.keys, *prediction_columns(self.classes)]


def prediction_columns(classes: list[str]) -> list[str]:
    """The columns a prediction adds to its row's keys."""
    return ["prediction", *[f"probability_{c}" for c in classes], "model_name", "model_version", "artifact_sha256"]


@dataclass
class ScoreResult:
    """What a run did: rows read, scored and rejected, how long it took, where the outputs are."""

    engine: Engine
    ref: VersionRef
    output: Path
    rejects: Path
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    seconds: float = 0.0
    contract: str = ""
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The run in one line: version, rows scored and rejected, pace, where the outputs are."""
        return (
            f"{self.ref.name} version {self.ref.version} ({self.engine}): {self.scored} rows scored, "
            f"{self.rejected} rejected, {self.rows_per_s:,.0f} rows/s in {self.seconds:.1f} s; predictions: "
            f"{self.output}; rejects: {self.rejects}"
        )


def check_files(job: ScoreJob) -> tuple[Format, Format]:
    """The input's and outputs' formats; the input must exist, and Spark reads and writes Parquet."""
    if not job.input.exists():
        raise FileNotFoundError(2, "No such file or directory", str(job.input))
    folder = job.input.is_dir()
    if folder and job.engine == "local":
        raise ScoringInputError(f"--input {job.input} is a folder: the local engine reads one CSV or Parquet file")
    in_format: Format = "parquet" if folder else file_format(job.input, "--input")
    out_format = file_format(job.output, "--output")
    if file_format(job.rejects_path, "--rejects") != out_format:
        raise ScoringInputError(f"--rejects {job.rejects_path}: use the format of --output ({out_format})")
    if job.engine == "spark" and "csv" in (in_format, out_format):
        raise ScoringInputError(
            "--engine spark reads and writes Parquet: convert the input to Parquet and name the outputs .parquet, "
            "or use --engine local for CSV"
        )
    for path in (job.output, job.rejects_path):
        if not path.parent.is_dir():
            raise FileNotFoundError(2, "No such folder for the output", str(path.parent))
    if job.output.resolve() in (job.input.resolve(), job.rejects_path.resolve()):
        raise ScoringInputError(f"--output {job.output}: name a file other than the input and the rejects file")
    return in_format, out_format


def input_columns(path: Path, kind: Format) -> list[str]:
    """The input's columns (a folder of Parquet files: their common schema)."""
    if path.is_dir():
        import pyarrow.dataset as ds

        return [str(name) for name in ds.dataset(path, format="parquet").schema.names]
    return columns_of(path, kind)


def choose_keys(columns: list[str], contract: ScoringContract, asked: tuple[str, ...], classes: list[str]) -> list[str]:
    """The key columns: those asked for, else every column that is neither a feature nor the target, else the row
    number. A key must be in the input and must not clash with a prediction column."""
    if asked:
        absent = [key for key in asked if key not in columns]
        if absent:
            raise ScoringInputError(f"--key {', '.join(absent)}: not a column of the input (columns: {columns})")
        keys = list(dict.fromkeys(asked))
    else:
        features = set(contract.feature_names)
        keys = [c for c in columns if c not in features and c != contract.target] or [ROW_KEY]
    clash = sorted(set(keys) & set(prediction_columns(classes)))
    if clash:
        raise ScoringInputError(f"input column(s) {clash} clash with the prediction's own columns: rename them")
    return keys


def check_columns(columns: list[str], contract: ScoringContract, path: Path) -> None:
    """The input must have every feature of the contract."""
    missing = contract.missing_columns(columns)
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ScoringInputError(
            f"--input {path} has no column {shown} of the contract ({contract.source}): score a file with every "
            f"feature of the model ({len(contract.features)} columns)"
        )
