"""The release report's plots as Plotly figures (plotly.py builds them, plotly.js draws them in the page).

Each function takes the report's numbers and returns a figure, or None when there is nothing to draw: the page
then says why instead of showing an empty plot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from release.report.model import CanaryRun, Plots

SMALL, WIDE = 260, 320  # heights in px: the first screen's plots, and the wider ones further down
VERDICT_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "inconclusive": "#ef6c00"}
PSI_LINES = ((0.1, "PSI 0.1: moderate shift"), (0.25, "PSI 0.25: major shift"))


def _figure(title: str, height: int, **layout: Any) -> Figure:
    """An empty figure in the report's style: white, small margins, legend on top."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(
        title={"text": title, "font": {"size": 14}, "x": 0.01},
        template="plotly_white",
        height=height,
        margin={"l": 55, "r": 20, "t": 48, "b": 45},
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.0, "yanchor": "bottom", "font": {"size": 10}},
        font={"size": 11},
        **layout,
    )
    return fig


def roc(p: Plots) -> Figure | None:
    """ROC curve of the test split, with the chance diagonal."""
    import plotly.graph_objects as go

    if not p.roc:
        return None
    auc = f", AUC {p.roc_auc:.4f}" if p.roc_auc is not None else ""
    fig = _figure(f"ROC curve (test split){auc}", SMALL, showlegend=False)
    fig.add_trace(go.Scatter(x=[r["fpr"] for r in p.roc], y=[r["tpr"] for r in p.roc], mode="lines", name="model"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"}, name="chance"))
    fig.update_xaxes(title_text="false positive rate", range=[0, 1])
    fig.update_yaxes(title_text="true positive rate", range=[0, 1.02])
    return fig


def confusion(p: Plots) -> Figure | None:
    """Confusion matrix of the test split: actual classes down, predicted across, counts in the cells."""
    import plotly.graph_objects as go

    if not p.confusion:
        return None
    labels = p.labels if len(p.labels) == len(p.confusion) else [str(i) for i in range(len(p.confusion))]
    fig = _figure("Confusion matrix (test split)", SMALL)
    fig.add_trace(
        go.Heatmap(
            z=p.confusion,
            x=labels,
            y=labels,
            colorscale="Blues",
            texttemplate="%{z}",
            showscale=False,
            hovertemplate="actual %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="predicted", type="category")
    fig.update_yaxes(title_text="actual", type="category", autorange="reversed")
    return fig


def losses(p: Plots) -> Figure | None:
    """Training and validation loss per epoch, the best epoch marked."""
    import plotly.graph_objects as go

    if not p.losses:
        return None
    fig = _figure("Training and validation loss", SMALL)
    epochs = [row.get("epoch") for row in p.losses]
    for key, name in (("train_loss", "train"), ("val_loss", "validation")):
        fig.add_trace(go.Scatter(x=epochs, y=[row.get(key) for row in p.losses], mode="lines", name=name))
    if p.best_epoch:
        fig.add_vline(x=p.best_epoch, line={"dash": "dot", "color": "#666"}, annotation_text=f"best {p.best_epoch}")
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="cross-entropy")
    return fig


def export_latency(p: Plots) -> Figure | None:
    """The exported model's latency distribution per batch size: the share of runs at or under each latency."""
    import plotly.graph_objects as go

    if not p.export_latency:
        return None
    fig = _figure("Export latency distribution (TorchScript, one thread)", WIDE)
    for batch, points in sorted(p.export_latency.items()):
        fig.add_trace(
            go.Scatter(x=[ms for _, ms in points], y=[q for q, _ in points], mode="lines+markers", name=batch)
        )
    fig.update_xaxes(title_text="latency (ms)", type="log")
    fig.update_yaxes(title_text="percentile of runs", range=[0, 100])
    return fig


def load_history(p: Plots) -> Figure | None:
    """The load test's p50/p95/p99 over its seconds, the SLOs dashed, throughput on the right axis."""
    import plotly.graph_objects as go

    if not p.load_history:
        return None
    fig = _figure("Load test latency over time", WIDE)
    fig.update_layout(
        yaxis={"title": {"text": "latency (ms)"}, "rangemode": "tozero"},
        yaxis2={"title": {"text": "req/s"}, "overlaying": "y", "side": "right", "rangemode": "tozero"},
        margin={"r": 55},
    )
    t = [row.get("t") for row in p.load_history]
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        fig.add_trace(go.Scatter(x=t, y=[row.get(key) for row in p.load_history], mode="lines", name=key[:3]))
    rps = [row.get("rps") for row in p.load_history]
    dotted = {"dash": "dot", "color": "#999"}
    fig.add_trace(go.Scatter(x=t, y=rps, mode="lines", name="req/s", yaxis="y2", line=dotted))
    for key in ("p95_ms", "p99_ms"):
        if key in p.load_slo:
            red = {"dash": "dash", "color": "#c62828"}
            fig.add_hline(y=p.load_slo[key], line=red, annotation_text=f"SLO {key[:3]}", annotation_position="top left")
    fig.update_xaxes(title_text="seconds into the test")
    return fig


def drift(p: Plots) -> Figure | None:
    """PSI per feature against the training reference, one bar per series (test split, served now)."""
    import plotly.graph_objects as go

    if not p.drift:
        return None
    fig = _figure("Drift per feature (PSI against the training reference)", WIDE, barmode="group")
    for series, values in p.drift.items():
        fig.add_trace(go.Bar(x=list(values), y=list(values.values()), name=series))
    for level, text in PSI_LINES:
        fig.add_hline(y=level, line={"dash": "dash", "color": "#999"}, annotation_text=text)
    for series, level in p.drift_noise.items():
        text = f"{series}: sampling noise alone gives about {level:.2f}"
        line = {"dash": "dot", "color": "#2e7d32"}
        fig.add_hline(y=level, line=line, annotation_text=text, annotation_position="bottom left")
    fig.update_xaxes(tickangle=-45, automargin=True)
    fig.update_yaxes(title_text="PSI", rangemode="tozero")
    return fig


def canary(run: CanaryRun, title: str) -> Figure | None:
    """One canary's intervals: canary and stable p99 against the interval, the weight as a step, the verdicts."""
    import plotly.graph_objects as go

    if not run.intervals:
        return None
    fig = _figure(title, SMALL)
    fig.update_layout(
        margin={"r": 55},
        yaxis={"title": {"text": "p99 (ms)"}, "rangemode": "tozero"},
        yaxis2={"title": {"text": "weight %"}, "overlaying": "y", "side": "right", "range": [0, 55], "dtick": 10},
    )
    n = [i.number for i in run.intervals]
    fig.add_trace(
        go.Scatter(
            x=n, y=[i.weight for i in run.intervals], name="weight %", yaxis="y2", line={"shape": "hv", "color": "#999"}
        )
    )
    fig.add_trace(go.Scatter(x=n, y=[i.stable_p99_ms for i in run.intervals], name="stable p99 ms", mode="lines"))
    fig.add_trace(
        go.Scatter(
            x=n,
            y=[i.canary_p99_ms for i in run.intervals],
            name="canary p99 ms",
            mode="lines+markers",
            marker={"size": 10, "color": [VERDICT_COLOURS.get(i.verdict, "#555") for i in run.intervals]},
            text=[i.verdict for i in run.intervals],
        )
    )
    fig.update_xaxes(title_text="interval", dtick=1)
    return fig
