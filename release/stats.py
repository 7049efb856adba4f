"""The statistics the canary analysis judges with: histogram quantiles, class-share divergence and the
chi-square test of two slots' class counts (exact by simulation when counts are sparse)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SPARSE_EXPECTED = 5.0  # Cochran's rule: below this expected count a chi-square p-value is too small
NULL_DRAWS = 20_000  # tables simulated for a p-value then: enough to resolve p = 0.001 (20 tables beyond)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket); None without data."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return lower_edge
            width = count - lower_count
            return lower_edge + (edge - lower_edge) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_edge, lower_count = edge, count
    return lower_edge


def js_divergence(p_counts: dict[str, float], q_counts: dict[str, float]) -> float | None:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two class distributions; None if either is empty."""
    keys = sorted(set(p_counts) | set(q_counts))
    p_total, q_total = sum(p_counts.values()), sum(q_counts.values())
    if p_total <= 0 or q_total <= 0:
        return None
    p = [max(p_counts.get(k, 0.0), 0.0) / p_total for k in keys]
    q = [max(q_counts.get(k, 0.0), 0.0) / q_total for k in keys]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, m, strict=True) if a > 0)

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def homogeneity_p_value(p_counts: dict[str, float], q_counts: dict[str, float]) -> float | None:
    """p-value of Pearson's chi-square test that two slots' class counts come from one distribution.

    None when it cannot be computed (an empty slot, or a single class between them)."""
    table = class_table(p_counts, q_counts)
    return None if table is None else combined_p_value([table])


@dataclass(frozen=True)
class ClassTable:
    """Two slots' predicted-class counts (the canary's row and the column totals) and their chi-square."""

    canary: tuple[int, ...]
    columns: tuple[int, ...]
    statistic: float
    freedom: int
    sparse: bool  # an expected count under SPARSE_EXPECTED: the chi-square distribution would mislead


def class_table(p_counts: dict[str, float], q_counts: dict[str, float]) -> ClassTable | None:
    """The table of two slots' class counts; None when it cannot be tested (an empty slot, or a single class
    between them). A counter reset's negative count reads as 0."""
    import numpy as np

    p_clean, q_clean = ({k: max(round(v), 0) for k, v in c.items()} for c in (p_counts, q_counts))
    keys = [k for k in sorted(set(p_clean) | set(q_clean)) if p_clean.get(k, 0) + q_clean.get(k, 0) > 0]
    p_total, q_total = sum(p_clean.values()), sum(q_clean.values())
    if p_total <= 0 or q_total <= 0 or len(keys) < 2:
        return None
    canary = tuple(p_clean.get(k, 0) for k in keys)
    columns = tuple(c + q_clean.get(k, 0) for c, k in zip(canary, keys, strict=True))
    statistic = float(_statistics(np.array([canary]), np.array(columns), p_total, q_total)[0])
    smallest = min(p_total, q_total) * min(columns) / (p_total + q_total)
    return ClassTable(canary, columns, statistic, len(keys) - 1, smallest < SPARSE_EXPECTED)


def _statistics(canary: np.ndarray, columns: np.ndarray, p_total: int, q_total: int) -> np.ndarray:
    """Pearson's statistic for each row of canary counts (one table per row), both margins fixed."""
    total = p_total + q_total
    expected_p, expected_q = p_total * columns / total, q_total * columns / total
    stable = columns - canary
    return (((canary - expected_p) ** 2 / expected_p) + ((stable - expected_q) ** 2 / expected_q)).sum(axis=1)


def combined_p_value(tables: list[ClassTable]) -> float:
    """p-value of the tables' summed chi-square statistic (independent intervals). Read from the chi-square
    distribution when every expected count is at least SPARSE_EXPECTED; otherwise by simulating the tables with
    their margins fixed (the conditional test of Fisher's exact test), since with a rare class a couple of
    predictions would pass for a divergence several times as often as the threshold says. Seeded by the counts,
    so a verdict repeats."""
    import numpy as np
    from scipy.special import chdtrc

    statistic = sum(t.statistic for t in tables)
    if not any(t.sparse for t in tables):
        return float(chdtrc(sum(t.freedom for t in tables), statistic))
    rng = np.random.default_rng([n for t in tables for n in (*t.canary, *t.columns)])
    null = np.zeros(NULL_DRAWS)
    for t in tables:
        columns = np.array(t.columns)
        draws = rng.multivariate_hypergeometric(columns, sum(t.canary), size=NULL_DRAWS)
        null += _statistics(draws, columns, sum(t.canary), int(columns.sum()) - sum(t.canary))
    return float((1 + np.count_nonzero(null >= statistic * (1 - 1e-9))) / (NULL_DRAWS + 1))
