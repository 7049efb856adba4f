"""The local engine: chunks of the input checked against the contract and scored in this process by the model as
the server loads it; predictions and rejects appended chunk by chunk, so memory stays bounded by the chunk size."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from deploy.serving.model import LoadedModel
from mlrelease.core.progress import Progress
from scoring.contract import OUTPUT_REASON, REASON
from scoring.formats import TableWriter, read_chunks
from scoring.plan import ROW_KEY, ScorePlan, ScoreResult


def predictions(keys: pd.DataFrame, probs: np.ndarray, plan: ScorePlan) -> pd.DataFrame:
    """The prediction rows: keys, the class the server would name (first of the highest probability), each
    class's probability (float32, as the model returns them), and the version that answered."""
    frame = keys.reset_index(drop=True).copy()
    classes = np.asarray(plan.classes, dtype=object)
    frame["prediction"] = classes[probs.argmax(axis=1)] if len(probs) else np.empty(0, dtype=object)
    for j, name in enumerate(plan.classes):
        frame[f"probability_{name}"] = probs[:, j].astype(np.float32)
    frame["model_name"] = plan.ref.name
    frame["model_version"] = plan.ref.version
    frame["artifact_sha256"] = plan.ref.sha256
    return frame


def rejects(keys: pd.DataFrame, reasons: np.ndarray) -> pd.DataFrame:
    """The rejected rows: keys and the reason."""
    frame = keys.reset_index(drop=True).copy()
    frame[REASON] = pd.Series(reasons, dtype=object)
    return frame


def score_chunk(
    chunk: pd.DataFrame, plan: ScorePlan, model: LoadedModel
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(predictions, rejects, the rejects' reasons) of one chunk: rows that break the contract are not scored;
    rows the model answers with NaN or Inf are rejected too (the server answers those 422)."""
    reasons, matrix = plan.contract.reasons(chunk)
    valid = reasons == ""
    keys = chunk[plan.keys]
    probs = np.empty((0, len(plan.classes)), dtype=np.float32)
    if valid.any():
        probs = model.predict(np.ascontiguousarray(matrix[valid], dtype=np.float32))
    finite = np.isfinite(probs).all(axis=1)
    if not finite.all():
        positions = np.flatnonzero(valid)[~finite]
        reasons[positions] = OUTPUT_REASON
        valid[positions] = False
    scored = predictions(keys[valid], probs[finite], plan)
    return scored, rejects(keys[~valid], reasons[~valid]), reasons[~valid]


def score_local(plan: ScorePlan, model: LoadedModel, result: ScoreResult, bar: Progress) -> None:
    """Score every chunk of the input into the plan's outputs; counts into ``result``."""
    job = plan.job
    text = plan.keys if plan.input_format == "csv" else []
    out = TableWriter(job.output, plan.output_format, plan.output_columns())
    bad = TableWriter(job.rejects_path, plan.output_format, [*plan.keys, REASON])
    reasons: Counter[str] = Counter()
    try:
        for chunk in read_chunks(job.input, plan.input_format, plan.read_columns, text, job.chunk_rows):
            if plan.row_key:
                chunk.insert(0, ROW_KEY, np.arange(result.rows, result.rows + len(chunk), dtype=np.int64))
            scored, rejected, why = score_chunk(chunk, plan, model)
            out.write(scored)
            bad.write(rejected)
            reasons.update(why.tolist())
            result.rows += len(chunk)
            result.scored += len(scored)
            result.rejected += len(rejected)
            bar.update(result.rows, rejected=result.rejected)
        empty = chunk_like(plan)
        out.commit(score_chunk(empty, plan, model)[0])
        bad.commit(rejects(empty[plan.keys], np.empty(0, dtype=object)))
    except BaseException:
        out.discard()
        bad.discard()
        raise
    result.reasons = dict(reasons.most_common())


def chunk_like(plan: ScorePlan) -> pd.DataFrame:
    """An empty chunk with the input's columns, so that an output with no rows still has its header."""
    return pd.DataFrame({name: pd.Series(dtype=object) for name in dict.fromkeys([*plan.keys, *plan.read_columns])})
