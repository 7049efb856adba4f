"""One batch-scoring run: check what the user asked for, resolve the version and its contract, hand the rows to an
engine (local or Spark), and say what happened.

Everything a user can get wrong (a missing file, an unknown format, a file without the contract's columns, an
unknown alias, no Spark or Java) is found before any row is scored, and raised as a one-line UserError.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from mlrelease.core.modelcard import ModelCard
from mlrelease.core.progress import Progress
from mlrelease.core.settings import Settings
from pipelines.schema import load_contract
from scoring import local, spark
from scoring.contract import ScoringContract, version_contract
from scoring.formats import ScoringInputError, row_count
from scoring.model import fetch_bundle, load_version, resolve_version
from scoring.plan import (
    ROW_KEY,
    ScoreJob,
    ScorePlan,
    ScoreResult,
    check_columns,
    check_files,
    choose_keys,
    input_columns,
)

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int | None, str], AbstractContextManager[Progress]]  # label, total, unit


def plan(job: ScoreJob, settings: Settings, workdir: Path) -> tuple[ScorePlan, Path]:
    """The checked plan and the version's verified bundle folder (local engine) or MLflow model (Spark)."""
    if job.engine == "spark":  # whether the engine can run at all comes first
        spark.check_spark()
    in_format, out_format = check_files(job)
    columns = input_columns(job.input, in_format)
    if job.schema is not None:  # a named contract is checked before the registry is asked anything
        named = load_contract(job.schema)
        check_columns(columns, ScoringContract(tuple(named.features), named.target.name, str(job.schema)), job.input)
    ref = resolve_version(job.model, settings)
    if job.engine == "spark":
        folder, card = spark.fetch_model(ref, workdir, settings)
    else:
        folder = fetch_bundle(ref, workdir, settings)
        card = ModelCard.read(folder)
    contract = version_contract(card, ref.tags, settings.home, job.schema)
    check_columns(columns, contract, job.input)
    keys = choose_keys(columns, contract, job.keys, card.classes)
    if keys == [ROW_KEY] and ROW_KEY not in columns and job.input.is_dir():
        raise ScoringInputError(f"--input {job.input} is a folder of files without a key column: name one with --key")
    return ScorePlan(job, in_format, out_format, columns, ref, contract, keys, card.classes), folder


def score(job: ScoreJob, settings: Settings, progress: ProgressFactory) -> ScoreResult:
    """Score ``job`` end to end; the outputs appear only when every row has been read."""
    with tempfile.TemporaryDirectory(prefix="mlrelease-score-") as tmp:
        start = time.perf_counter()  # the whole run: the version's download and load (or Spark's start) included
        checked, folder = plan(job, settings, Path(tmp))
        result = ScoreResult(job.engine, checked.ref, job.output, job.rejects_path, contract=checked.contract.source)
        log.info("scoring %s with %s (contract %s, keys %s)", job.input, checked.ref.uri, result.contract, checked.keys)
        if job.engine == "spark":  # Spark reports tasks of its running stages, not rows
            bar_context = progress(f"score {job.input.name} on Spark", None, "tasks")
        else:
            bar_context = progress(f"score {job.input.name}", row_count(job.input, checked.input_format), "rows")
        with bar_context as bar:
            if job.engine == "spark":
                spark.score_spark(checked, folder, result, bar)
            else:
                local.score_local(checked, load_version(checked.ref, folder), result, bar)
        result.seconds = time.perf_counter() - start
    return result
