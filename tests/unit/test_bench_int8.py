"""The INT8 benchmark's report: INT8-over-FP32 ratios and the table docs/benchmarks.md quotes."""

from __future__ import annotations

from typing import Any

from benchmarks.bench_int8 import markdown, ratios


def _variant(size: int, module_us: float, peak: float, p99: float, rss: float) -> dict[str, Any]:
    module = {f"batch_{n}": {"p50": module_us / 1000, "p99": module_us / 500} for n in (1, 32)}
    http = {f"batch_{n}": {"peak_rps": peak / n, "p50_ms": 0.5, "p99_ms": p99} for n in (1, 32)}
    figures = {"accuracy": 0.96, "roc_auc": 0.99, "artifact_bytes": size, "module_latency_ms": module, "rss_mb": rss}
    return {**figures, **http}


def test_ratios_are_int8_over_fp32_and_the_table_has_one_row_per_variant() -> None:
    report = {"variants": {"fp32": _variant(8000, 12.0, 9000, 4.0, 260), "int8": _variant(6000, 9.0, 9900, 2.0, 260)}}
    got = ratios(report)
    assert got["artifact_bytes"] == 0.75 and got["rss_mb"] == 1.0
    assert got["module_p50_batch_1"] == 0.75 and got["http_peak_rps_batch_32"] == 1.1
    assert got["http_p99_ms_batch_1"] == 0.5
    table = markdown(report).splitlines()
    assert len(table) == 4 and table[2].startswith("| fp32 | 0.9600 | 0.9900 | 8,000 B | 12.0 / 12.0 |")
    assert table[3].startswith("| int8 |") and table[3].endswith("| 260 |")
