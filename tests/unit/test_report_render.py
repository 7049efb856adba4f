"""The release report page: one self-contained HTML file (plotly.js inlined, nothing fetched), every section of a
release story drawn, text escaped, a plot without data replaced by the reason."""

from __future__ import annotations

import re
from pathlib import Path

from release.report.gather import gather
from release.report.render import render, write
from tests.unit.test_report_gather import story_context


def test_the_page_is_self_contained_and_tells_the_whole_story(tmp_path: Path) -> None:
    html = render(gather(story_context(tmp_path / "ws"), "2"))
    assert not re.search(r"<script[^>]+src=|<link\b|<img[^>]+src=\"?https?:|@import", html)
    assert len(html) > 3_000_000  # plotly.min.js itself, inlined
    assert html.count("Plotly.newPlot(") == 7  # ROC, confusion, losses, export latency, load test, drift, canary
    for text in ("breast-cancer-classifier", "version 2", "b" * 64, "sha256:" + "d" * 64, "2222222"):
        assert text in html, text
    for text in ("Identity", "Gates", "Canary 1", "History of version 2", "What else differs"):
        assert text in html, text
    assert "production/stable: 100% of traffic" in html and "min_roc_auc" in html
    assert "too few requests" in html and "version 1, which it replaced in production" in html


def test_text_from_the_audit_log_is_escaped(tmp_path: Path) -> None:
    ctx = story_context(tmp_path / "ws")
    ctx.records[-1]["reason"] = "<script>alert('pwned')</script>"
    html = render(gather(ctx, "2"))
    assert "<script>alert(" not in html and "&lt;script&gt;alert(" in html


def test_names_from_the_data_stay_data_in_the_plots(tmp_path: Path) -> None:
    ctx = story_context(tmp_path / "ws")
    report = gather(ctx, "2")
    report.plots.drift["test split"]["</script><script>alert(1)</script>"] = 0.3
    html = render(report)
    assert "<script>alert(1)" not in html and "\\u003c\\u002fscript\\u003e" in html


def test_a_plot_without_data_says_why(tmp_path: Path) -> None:
    ctx = story_context(tmp_path / "ws")
    (tmp_path / "ws" / "reports" / "plots" / "roc.json").unlink()
    html = render(gather(ctx, "1"))  # not the workspace's model either: its pipeline plots are not shown
    assert "No roc plot: this workspace&#39;s pipeline reports describe another model" in html
    assert "Version 1 has had no canary yet." in html


def test_the_page_is_written_whole(tmp_path: Path) -> None:
    report = gather(story_context(tmp_path / "ws"), "2")
    out = write(report, tmp_path / "out" / "release_v2.html")
    assert out.read_text().startswith("<!DOCTYPE html>") and out.read_text().rstrip().endswith("</html>")
    assert sorted(p.name for p in out.parent.iterdir()) == ["release_v2.html"]
