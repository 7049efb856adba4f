"""Drift per feature against the training reference: the population stability index of the test split (the
baseline: close to 0 when the splits agree), and of the rows a serving slot saw last (its /metrics page), computed
as the model server computes it (deploy.serving.drift)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
PSI_GAUGE = "mlrelease_feature_drift_psi"


def noise_level(rows: int, bins: int) -> float:
    """The PSI that sampling alone gives ``rows`` rows spread over ``bins`` bins of the same distribution: about
    (bins - 1) / rows (PSI is a symmetric divergence; n times it is close to a chi-square with bins - 1 degrees)."""
    return (bins - 1) / rows if rows > 0 else 0.0


def split_psi(split_csv: Path, reference_json: Path, feature_names: list[str]) -> tuple[dict[str, float], float]:
    """PSI of each feature of a prepared split against the reference bins (empty when either file is missing), and
    the PSI sampling alone would give that many rows."""
    if not split_csv.is_file() or not reference_json.is_file():
        return {}, 0.0
    import numpy as np
    import pandas as pd

    from deploy.serving.drift import DriftMonitor
    from mlrelease.core.modelcard import ReferenceStats

    try:
        reference = ReferenceStats.model_validate_json(reference_json.read_text())
        frame = pd.read_csv(split_csv)
    except (OSError, ValueError) as exc:  # a malformed file is left out of the report, not the end of it
        log.warning("report: no drift of %s against %s: %s", split_csv, reference_json, exc)
        return {}, 0.0
    names = [name for name in feature_names if name in frame.columns]
    if not names or frame.empty:
        return {}, 0.0
    rows = frame[names].to_numpy(dtype=np.float32)
    monitor = DriftMonitor(reference, names, window=len(rows))
    monitor.observe(rows)
    bins = [len(f.fractions) for f in reference.features.values()] or [1]
    noise = noise_level(len(rows), sorted(bins)[len(bins) // 2])
    return {name: round(value, 6) for name, value in monitor.scores().items()}, round(noise, 4)


def served_psi(metrics_page: str) -> dict[str, float]:
    """The PSI gauges of a slot's /metrics pages (each replica's rolling window of served rows), by feature,
    averaged over the replicas."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(metrics_page):
            for sample in family.samples:
                if sample.name == PSI_GAUGE and "feature" in sample.labels:
                    found.setdefault(sample.labels["feature"], []).append(float(sample.value))
    except ValueError as exc:
        log.warning("report: unreadable metrics page (%s); no served drift", exc)
        return {}
    return {feature: round(sum(values) / len(values), 6) for feature, values in found.items()}
