"""Render a :class:`ReleaseReport` as one self-contained HTML page: a Jinja2 template (package data in
``templates/``) with Plotly figures, and plotly.js inlined from the plotly package, so the page opens offline."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from release.report import plots
from release.report.model import ReleaseReport

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup
    from plotly.graph_objects import Figure

TEMPLATES = Path(__file__).with_name("templates")
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": False}  # no buttons over the titles
FIRST_SCREEN = (("roc", plots.roc), ("confusion", plots.confusion), ("losses", plots.losses))
MORE = (("export_latency", plots.export_latency), ("load_history", plots.load_history))


@dataclass(frozen=True)
class PlotBlock:
    """A plot's HTML, or why it has none (the page says so rather than show an empty plot)."""

    name: str
    html: Markup | None
    why: str = ""


def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates: HTML autoescaped, undefined names an error."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def figure_html(fig: Figure, div_id: str) -> Markup:
    """The figure's div and its Plotly.newPlot call (plotly.js itself is inlined once, in the page's head)."""
    from markupsafe import Markup

    html = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)
    # plotly's JSON escapes <, > and / (a feature named "</script>" stays data); the div id is ours
    return Markup(html)  # noqa: S704  # nosec B704


def block(name: str, fig: Figure | None, why: str) -> PlotBlock:
    """A plot block: the figure's HTML, or the reason it has none."""
    return PlotBlock(name, figure_html(fig, f"plot-{name}") if fig is not None else None, why)


def plot_blocks(report: ReleaseReport) -> dict[str, PlotBlock]:
    """Every plot of the report by name (the canary runs' as ``canary-N``)."""
    p = report.plots
    blocks = {name: block(name, draw(p), p.why_missing.get(name, "no data")) for name, draw in (*FIRST_SCREEN, *MORE)}
    blocks["drift"] = block("drift", plots.drift(p), p.why_missing.get("drift", "no data"))
    for number, run in enumerate(report.canary_runs, start=1):
        title = f"Canary {number}: p99 and weight per interval"
        blocks[f"canary-{number}"] = block(f"canary-{number}", plots.canary(run, title), "no interval was measured")
    return blocks


def plotly_js() -> Markup:
    """plotly.min.js as the plotly package ships it (no network: the page works offline)."""
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    return Markup(get_plotlyjs())  # noqa: S704  # the library's own bundle, no report data  # nosec B704


def render(report: ReleaseReport) -> str:
    """The report as one HTML page."""
    template = environment().get_template("report.html.j2")
    return template.render(
        report=report,
        plots=plot_blocks(report),
        first_screen=[name for name, _ in FIRST_SCREEN],
        more=[name for name, _ in MORE],
        plotly_js=plotly_js(),
    )


def write(report: ReleaseReport, out: Path) -> Path:
    """Render and write the page atomically (a reader never sees half a report)."""
    html = render(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
