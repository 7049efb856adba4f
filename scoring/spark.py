"""The Spark engine: the same contract check as the local engine written as Spark expressions, the registered
version scored through ``mlflow.pyfunc.spark_udf`` (registry/pyfunc_model.py: TorchScript, float32 probabilities
[rows, classes]), Parquet in and out.

The pyfunc model does not check its own artifact, so the MLflow model is downloaded here once, its ``model.pt``
is checked against the card and the registry's sha256, and that checked folder is what ``spark_udf`` loads (in
local mode the executors read it from disk; on a cluster Spark ships that folder to them).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
from pathlib import Path
from typing import Any

from mlrelease.core.errors import UserError
from mlrelease.core.modelcard import IntegrityError, ModelCard, verify_bundle
from mlrelease.core.progress import Progress
from mlrelease.core.settings import Settings
from scoring.contract import CHECKS, FLOAT32_MAX, OUTPUT_REASON, REASON, ScoringContract, applies, reason_text
from scoring.model import UntrustedModel, VersionRef
from scoring.plan import ROW_KEY, ScorePlan, ScoreResult

log = logging.getLogger(__name__)

PROBS = "_probabilities"
VALID = "_valid"
SESSION_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",  # our own bar, from the status tracker
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
}


class SparkUnavailable(UserError):
    """pyspark is not installed, or Java is not there for it."""


def check_spark() -> None:
    """pyspark must import and a Java runtime must be found (JAVA_HOME, else ``java`` on PATH)."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise SparkUnavailable(
            "--engine spark needs pyspark: pip install 'mlrelease[spark]' (or `make test` installs it), or use "
            "--engine local"
        ) from exc
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else None
    if (java is not None and not java.is_file()) or (java is None and shutil.which("java") is None):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH"
        raise SparkUnavailable(f"--engine spark needs Java 17 ({where}): install a JDK 17 and set JAVA_HOME to it")


def fetch_model(ref: VersionRef, workdir: Path, settings: Settings) -> tuple[Path, ModelCard]:
    """The version's MLflow model downloaded into ``workdir``, its artifact checked against card and registry."""
    import mlflow

    from registry.artifacts import artifact_errors
    from registry.client import configure_mlflow

    if not ref.sha256:
        raise UntrustedModel(f"{ref.asked}: version {ref.version} has no artifact_sha256 tag; refusing to score")
    with artifact_errors(configure_mlflow(settings), "fetch"):
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(workdir / "mlflow")))
    card_file = next(folder.rglob("model_card.json"), None)
    if card_file is None:
        raise UntrustedModel(f"{ref.asked}: the registered model has no model_card.json; refusing to score")
    try:
        card = verify_bundle(card_file.parent, expected_sha256=ref.sha256)
    except IntegrityError as exc:
        raise UntrustedModel(f"refusing to score with {ref.asked}: {exc}") from exc
    return folder, card


@contextmanager
def spark_session(master: str) -> Iterator[Any]:
    """A SparkSession on ``master`` (UI off, few shuffle partitions, Arrow on); stopped at the end."""
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName("mlrelease-score")
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    if master.startswith("local"):  # the executors are this machine's: this interpreter, with torch and mlflow
        # PySpark takes the Python workers' interpreter from PYSPARK_PYTHON, else `python3` on PATH (another Python
        # when this venv is not activated: no pandas there); the conf is for the JVM's own launches
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    try:
        session = builder.getOrCreate()
    except (PySparkException, RuntimeError) as exc:
        raise SparkUnavailable(f"--master {master}: Spark did not start: {' '.join(str(exc).split())[:300]}") from exc
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def text_flag(index: int) -> str:
    """The hidden column that says a text cell of feature ``index`` is not a number."""
    return f"_not_a_number_{index}"


def checked_frame(spark: Any, plan: ScorePlan) -> Any:
    """The input's keys, its features as doubles (text cells parsed; one that is no number flagged), and whether
    the row meets the contract (VALID); the row's position in its file is the key when the input has none."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(str(plan.job.input))
    kinds = {field.name: field.dataType.typeName() for field in frame.schema.fields}
    if plan.row_key:
        frame = frame.withColumn(ROW_KEY, F.col("_metadata.row_index"))
    columns = [F.col(f"`{key}`") for key in plan.keys]
    for j, name in enumerate(plan.contract.feature_names):
        raw = F.col(f"`{name}`")
        value = raw.try_cast("double") if kinds[name] == "string" else raw.cast("double")
        columns.append(value.alias(name))
        if kinds[name] == "string":
            columns.append((raw.isNotNull() & value.isNull()).alias(text_flag(j)))
    values = frame.select(*columns)
    return values.withColumn(VALID, F.coalesce(valid_row(plan.contract), F.lit(False)))


def valid_row(contract: ScoringContract) -> Any:
    """True when every feature passes every check: a handful of comparisons per feature (NaN compares above
    every number in Spark, so a bound check fails it; a null makes the row's check null, read as invalid)."""
    from pyspark.sql import functions as F

    tests = []
    for spec in contract.features:
        value = F.col(f"`{spec.name}`")
        tests.append(~F.isnan(value) & (F.abs(value) <= FLOAT32_MAX))  # not null, NaN or Inf; float32 range
        if spec.min is not None:
            tests.append(value >= F.lit(spec.min))
        if spec.max is not None:
            tests.append(value <= F.lit(spec.max))
        if spec.dtype == "int":
            tests.append(value == F.floor(value))
    return reduce(lambda a, b: a & b, tests)


def reason_column(contract: ScoringContract, flagged: set[int]) -> Any:
    """The row's reasons joined with '; ', worded as scoring.contract words them (computed for rejected rows
    only: it is a long expression). ``flagged``: features read from text, which can be not a number."""
    from pyspark.sql import functions as F

    parts = [_feature_reason(spec, j if j in flagged else None) for j, spec in enumerate(contract.features)]
    return F.concat_ws("; ", *parts)


def _feature_reason(spec: Any, flag: int | None) -> Any:
    """One feature's first failing check, in scoring.contract.CHECKS order, as its reason text; or null."""
    from pyspark.sql import functions as F

    value = F.col(f"`{spec.name}`")
    infinite = F.abs(value) == float("inf")
    finite = ~F.isnan(value) & ~infinite
    conditions = {
        "not_a_number": F.col(text_flag(flag)) if flag is not None else F.lit(False),
        "missing": value.isNull() | F.isnan(value),
        "infinite": infinite,
        "float32": finite & (F.abs(value) > FLOAT32_MAX),
        "below": finite & (value < F.lit(spec.min)),
        "above": finite & (value > F.lit(spec.max)),
        "not_integer": finite & (value != F.floor(value)),
    }
    checks = [c for c in CHECKS if applies(spec, c) and (c != "not_a_number" or flag is not None)]
    expression = F.when(conditions[checks[0]], F.lit(reason_text(spec, checks[0])))
    for check in checks[1:]:
        expression = expression.when(conditions[check], F.lit(reason_text(spec, check)))
    return expression


def rejected_frame(checked: Any, plan: ScorePlan) -> Any:
    """The rows that break the contract: keys and reason."""
    from pyspark.sql import functions as F

    flagged = {j for j in range(len(plan.contract.features)) if text_flag(j) in checked.columns}
    keys = [F.col(f"`{key}`") for key in plan.keys]
    return checked.where(~F.col(VALID)).select(*keys, reason_column(plan.contract, flagged).alias(REASON))


def scored_frame(checked: Any, plan: ScorePlan, model_dir: Path) -> Any:
    """Rows that meet the contract, with the model's probabilities as array<float>."""
    import mlflow
    from pyspark.sql import functions as F

    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)  # its warning about env_manager="local": meant, the executors run this venv
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            udf = mlflow.pyfunc.spark_udf(
                checked.sparkSession, str(model_dir), result_type="array<float>", env_manager="local"
            )
    finally:
        pyfunc_log.setLevel(level)
    features = F.struct(*[F.col(f"`{name}`") for name in plan.contract.feature_names])
    keys = [F.col(f"`{key}`") for key in plan.keys]
    return checked.where(F.col(VALID)).select(*keys, udf(features).alias(PROBS))


def prediction_frame(scored: Any, plan: ScorePlan) -> Any:
    """Keys, the predicted class (first of the highest probability, as the server names it), one float column
    per class, and the version that answered."""
    from pyspark.sql import functions as F

    probs = F.col(PROBS)
    classes = F.array(*[F.lit(c) for c in plan.classes])
    best = F.element_at(classes, F.array_position(probs, F.array_max(probs)).cast("int"))
    return scored.select(
        *[F.col(f"`{key}`") for key in plan.keys],
        best.alias("prediction"),
        *[F.element_at(probs, j + 1).alias(f"probability_{c}") for j, c in enumerate(plan.classes)],
        F.lit(plan.ref.name).alias("model_name"),
        F.lit(plan.ref.version).alias("model_version"),
        F.lit(plan.ref.sha256).alias("artifact_sha256"),
    )


def finite_output() -> Any:
    """True for a row whose every probability is a finite number."""
    from pyspark.sql import functions as F

    return F.forall(F.col(PROBS), lambda p: ~F.isnan(p) & (F.abs(p) != float("inf")))


def score_spark(plan: ScorePlan, model_dir: Path, result: ScoreResult, bar: Progress) -> None:
    """Score the plan's input on Spark into Parquet folders at its outputs; counts into ``result``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    job = plan.job
    with spark_session(job.master) as spark, tracked(spark, bar):
        checked = checked_frame(spark, plan)
        scored = scored_frame(checked, plan, model_dir).persist(StorageLevel.MEMORY_AND_DISK)
        keys = [F.col(f"`{key}`") for key in plan.keys]
        bad_output = scored.where(~finite_output()).select(*keys, F.lit(OUTPUT_REASON).alias(REASON))
        _write(job.output, prediction_frame(scored.where(finite_output()), plan))
        _write(job.rejects_path, rejected_frame(checked, plan), bad_output)
        scored.unpersist()
    result.scored = written_rows(job.output)
    result.reasons = reason_counts(job.rejects_path)
    result.rejected = sum(result.reasons.values())
    result.rows = result.scored + result.rejected
    bar.update(result.rows, total=result.rows, rejected=result.rejected)


def written_rows(path: Path) -> int:
    """Rows in a Parquet folder, from its files' footers (no Spark job)."""
    import pyarrow.dataset as ds

    return int(ds.dataset(path, format="parquet").count_rows())


def reason_counts(path: Path) -> dict[str, int]:
    """How many rejected rows give each reason, most frequent first (read from the rejects folder)."""
    import pyarrow.dataset as ds

    counts = ds.dataset(path, format="parquet").to_table(columns=[REASON]).column(REASON).value_counts()
    pairs = [(str(item["values"]), int(item["counts"])) for item in counts.to_pylist()]
    return dict(sorted(pairs, key=lambda pair: -pair[1]))


def _write(path: Path, *frames: Any) -> None:
    """Write ``frames`` (same columns) as one Parquet folder under a hidden name, then move it to ``path``
    (replacing what was there), so a failed run leaves no half-written output."""
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for i, frame in enumerate(frames):
        frame.write.mode("append" if i else "overwrite").parquet(str(partial))
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.replace(partial, path)


@contextmanager
def tracked(spark: Any, bar: Progress, every_s: float = 0.5) -> Iterator[None]:
    """While inside, the bar shows the Spark tasks done of the running stages (from the status tracker)."""
    tracker = spark.sparkContext.statusTracker()
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every_s):
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            stages = [s for s in stages if s is not None]
            if stages:
                finished = sum(s.numCompletedTasks for s in stages)
                bar.update(finished, total=sum(s.numTasks for s in stages), stage=stages[0].name[:40])

    thread = threading.Thread(target=poll, name="spark-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
