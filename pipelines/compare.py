"""A pull request's model against its base branch: metrics within tolerance, and gate thresholds not loosened.

In a pull request the throwaway registry has no `production` version, so evaluate's champion gate cannot fire.
The base branch's committed `reports/metrics.json` is the champion there: accuracy and ROC AUC may trail it by at
most the base branch's `gates.champion_tolerance` (the PR cannot widen its own tolerance), and a PR that lowers a
minimum or raises a maximum of a gate is named, since it changes what every later model must pass. A change to the
model's interface in the data contract (features dropped, added or reordered, another target or labels) is shown
to the reviewer without failing: it is allowed, but clients must follow.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

# The champion gate's metrics (higher is better), then figures shown for context only.
GATED_METRICS = ("accuracy", "roc_auc")
SHOWN_METRICS = ("f1", "precision", "recall")


Marks = dict[str, tuple[str, float | None]]  # key -> (the way that loosens it: "down" or "up", its code default)


def _marks(model: type[BaseModel], key: str) -> Iterator[tuple[str, Any, Any]]:
    """(field name, its ``key`` mark, its default) for each field of ``model`` that carries the mark."""
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        mark = extra.get(key) if isinstance(extra, dict) else None
        if mark is not None:
            yield name, mark, info.default


def marked_fields(model: type[BaseModel], prefix: str = "") -> Marks:
    """The model's fields marked with LOWER_IS_LAXER or HIGHER_IS_LAXER where they are defined."""
    return {
        f"{prefix}{name}": (str(mark), _number(default))
        for name, mark, default in _marks(model, "loosens")
        if mark in ("down", "up")
    }


def threshold_fields() -> Marks:
    """Every gate threshold in params.yaml, by dotted key, read from the pydantic fields that define them."""
    from deploy.image.build import BuildParams
    from deploy.loadtest.runner import SLO
    from mlrelease.core.params import CanaryParams, ExportParams, GateParams

    sections: dict[str, type[BaseModel]] = {
        "gates": GateParams,
        "export": ExportParams,
        "loadtest.slo": SLO,
        "canary": CanaryParams,
        "build": BuildParams,
    }
    return {
        key: mark for section, model in sections.items() for key, mark in marked_fields(model, f"{section}.").items()
    }


def switch_fields() -> dict[str, tuple[list[str], str]]:
    """Every gate switch in params.yaml (a field marked with its values strictest first), with its code default."""
    from mlrelease.core.params import PromotionParams

    return {
        f"promotion.{name}": ([str(v) for v in order], str(default))
        for name, order, default in _marks(PromotionParams, "strictest_first")
        if isinstance(order, list)
    }


def loosened_switches(base_params: dict[str, Any], head_params: dict[str, Any]) -> list[str]:
    """Each gate switch the head turned laxer (``promotion.require_scanned_image: true -> false``); a switch the
    head deletes counts with the code's default in its place."""
    found = []
    for key, (order, default) in switch_fields().items():
        b, h = (_switch_value(_lookup(params, key), default) for params in (base_params, head_params))
        if b in order and h in order and order.index(h) > order.index(b):
            found.append(f"{key}: {b} -> {h}")
    return found


def _switch_value(value: Any, default: str) -> str:
    """A switch as params.yaml gives it (YAML booleans included), the default when absent."""
    if value is None:
        return default
    return str(value).lower()


@dataclass(frozen=True)
class MetricRow:
    """One metric, base against head; ``passed`` is None for a figure shown without a gate."""

    name: str
    base: float | None
    head: float | None
    passed: bool | None

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.head is None else self.head - self.base


@dataclass(frozen=True)
class Comparison:
    rows: list[MetricRow]
    tolerance: float
    loosened: list[str]
    tolerance_from: str = "the base branch's params.yaml"
    interface: list[str] = field(default_factory=list)  # shown to the reviewer, never a failure by itself

    @property
    def regressions(self) -> list[MetricRow]:
        return [row for row in self.rows if row.passed is False]

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.loosened


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["git", *(["-C", str(cwd)] if cwd is not None else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)  # fixed argv, no shell


def git_show(ref: str, path: str, cwd: Path | None = None) -> str | None:
    """A file's text at ``ref`` (``./path``: relative to ``cwd``), or None when the file does not exist there;
    ValueError for an unknown ref."""
    if _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=cwd).returncode != 0:
        raise ValueError(f"git does not know {ref!r} (fetch the base branch first, e.g. fetch-depth: 0)")
    if _git("cat-file", "-e", f"{ref}:{path}", cwd=cwd).returncode != 0:
        return None
    proc = _git("show", f"{ref}:{path}", cwd=cwd)
    if proc.returncode != 0:
        raise ValueError(f"git cannot read {path} at {ref!r}: {proc.stderr.strip()}")
    return proc.stdout


def compare_metrics(base: dict[str, Any], head: dict[str, Any], tolerance: float) -> list[MetricRow]:
    """Gated metrics may trail the base by at most ``tolerance``; a gated metric missing from head fails."""
    rows = []
    for name in (*GATED_METRICS, *SHOWN_METRICS):
        b, h = _number(base.get(name)), _number(head.get(name))
        passed = None
        if name in GATED_METRICS and b is not None:
            passed = h is not None and h >= b - tolerance
        rows.append(MetricRow(name, b, h, passed))
    return rows


def _laxer(loosens: str, base: float, head: float) -> bool:
    """Whether ``head`` lets more through than ``base`` for a threshold that loosens ``loosens``."""
    return head < base if loosens == "down" else head > base


def loosened_gates(
    base_params: dict[str, Any], head_params: dict[str, Any], thresholds: Marks | None = None
) -> list[str]:
    """Each threshold the head moved the loosening way, as 'key: base -> head'; a threshold the head deletes
    counts with the code's default in its place."""
    found = []
    for key, (loosens, default) in (threshold_fields() if thresholds is None else thresholds).items():
        b, h = _number(_lookup(base_params, key)), _number(_lookup(head_params, key))
        shown = f"{h:g}" if h is not None else f"removed (the code's default {default} applies)"
        b, h = (default if b is None else b), (default if h is None else h)
        if b is not None and h is not None and _laxer(loosens, b, h):
            found.append(f"{key}: {b:g} -> {shown}")
    return found


def loosened_contract(base: dict[str, Any], head: dict[str, Any], label: str) -> list[str]:
    """What the head's data contract lets through that the base's did not: a feature's range widened or opened,
    nulls allowed, int widened to float, fewer rows or more duplicates accepted. Features added or dropped change
    the model's input instead, which its card and the canary's contract check already catch."""
    from pipelines.schema import DataContract, FeatureSpec

    bounds = marked_fields(FeatureSpec)  # min and max; a bound the head drops (None) opens the range
    head_features = {f.get("name"): f for f in head.get("features") or [] if isinstance(f, dict)}
    found = []
    for feature in base.get("features") or []:
        new = head_features.get(feature.get("name")) if isinstance(feature, dict) else None
        if new is None:
            continue
        where = f"{label} feature {feature['name']!r}"
        for bound, (loosens, _) in bounds.items():
            b, h = _number(feature.get(bound)), _number(new.get(bound))
            if b is not None and (h is None or _laxer(loosens, b, h)):
                found.append(f"{where} {bound}: {b:g} -> {'none' if h is None else f'{h:g}'}")
        if not feature.get("nullable", False) and new.get("nullable", False):
            found.append(f"{where}: nulls now allowed")
        if feature.get("dtype", "float") == "int" and new.get("dtype", "float") == "float":
            found.append(f"{where}: dtype int -> float")
    return found + [f"{label} {item}" for item in loosened_gates(base, head, marked_fields(DataContract))]


def interface_changes(base: dict[str, Any], head: dict[str, Any], label: str) -> list[str]:
    """What the head's data contract changes in the model's interface: features dropped, added or reordered (a row
    sent by position then means other features), the target or its labels (a class index then means another
    class). No loosening, but clients must change and the base's metrics measured another task."""

    def names(contract: dict[str, Any]) -> list[str]:
        return [str(f.get("name")) for f in contract.get("features") or [] if isinstance(f, dict)]

    b, h = names(base), names(head)
    found = [f"{label}: feature {n!r} dropped" for n in b if n not in h]
    found += [f"{label}: feature {n!r} added" for n in h if n not in b]
    if [n for n in b if n in h] != [n for n in h if n in b]:
        found.append(f"{label}: features reordered (rows sent by position now mean other features)")
    bt, ht = base.get("target") or {}, head.get("target") or {}
    if isinstance(bt, dict) and isinstance(ht, dict):
        if bt.get("name") != ht.get("name"):
            found.append(f"{label}: target {bt.get('name')!r} -> {ht.get('name')!r}")
        if bt.get("labels") != ht.get("labels"):
            found.append(f"{label}: target labels {bt.get('labels')} -> {ht.get('labels')} (class indices move)")
    return found


def _contracts(ref: str, base_params: dict[str, Any], head_params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The data contract at ``ref`` against the working tree's (each found through its own params.yaml): what it
    loosens, and what it changes in the model's interface."""
    from pathlib import Path

    base_path, head_path = _lookup(base_params, "data.schema"), _lookup(head_params, "data.schema")
    if not isinstance(base_path, str) or not isinstance(head_path, str) or not Path(head_path).is_file():
        return [], []
    base_text = git_show(ref, base_path)
    if base_text is None:
        return [], []
    base, head = yaml.safe_load(base_text) or {}, yaml.safe_load(Path(head_path).read_text()) or {}
    return loosened_contract(base, head, head_path), interface_changes(base, head, head_path)


def compare_with(ref: str, head_metrics: dict[str, Any], head_params: dict[str, Any]) -> Comparison | None:
    """The comparison with ``ref``'s committed metrics and params; None when ``ref`` has no metrics yet."""
    base_text = git_show(ref, "reports/metrics.json")
    if base_text is None:
        return None
    base_params = yaml.safe_load(git_show(ref, "params.yaml") or "{}") or {}
    tolerance = _number(_lookup(base_params, "gates.champion_tolerance"))
    source = f"{ref}'s params.yaml"
    if tolerance is None:
        tolerance = _number(_lookup(head_params, "gates.champion_tolerance")) or 0.0
        source = f"this change's params.yaml ({ref} sets none)"
    rows = compare_metrics(json.loads(base_text), head_metrics, tolerance)
    contract_loosened, interface = _contracts(ref, base_params, head_params)
    loosened = loosened_gates(base_params, head_params) + loosened_switches(base_params, head_params)
    return Comparison(rows, tolerance, loosened + contract_loosened, source, interface)


def markdown(comparison: Comparison, ref: str, accepted: bool = False) -> str:
    """The comparison as a Markdown section for a job summary (a failure a reviewer accepted says so)."""
    verdict = "passed" if comparison.passed else "**FAILED**"
    if accepted and not comparison.passed:
        verdict = "**FAILED, accepted** by a reviewer (`accept-regression`)"
    lines = [f"## Model vs {ref}: {verdict}", "", "| metric | base | this PR | change | gate |"]
    lines.append("|---|---:|---:|---:|---|")
    fail = f"FAIL (more than {comparison.tolerance:g} below base)"
    for row in comparison.rows:
        gate = "-" if row.passed is None else ("PASS" if row.passed else fail)
        lines.append(f"| {row.name} | {_fmt(row.base)} | {_fmt(row.head)} | {_fmt(row.delta, signed=True)} | {gate} |")
    lines += [
        "",
        f"Tolerance: `gates.champion_tolerance` = {comparison.tolerance:g}, from {comparison.tolerance_from}.",
    ]
    for heading, why, items in _sections(comparison):
        lines += ["", f"**{heading}** ({why}):", *(f"- `{item}`" for item in items)]
    return "\n".join(lines)


def _sections(comparison: Comparison) -> list[tuple[str, str, list[str]]]:
    """(heading, why it matters, items) of the lists both renderings show below the metrics, the empty ones left out."""
    sections = [
        (
            "Gates or data contract loosened by this PR",
            "every later model and dataset is held to these",
            comparison.loosened,
        ),
        (
            "Model interface changed by this PR",
            "clients must follow, and the base's metrics measured the old task",
            comparison.interface,
        ),
    ]
    return [section for section in sections if section[2]]


def table(comparison: Comparison, ref: str, accepted: bool = False) -> Any:
    """The comparison for a terminal: a rich table of the metrics with the verdict as its title, then the
    loosened checks and interface changes as lists (the same content as :func:`markdown`)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    verdict = "passed" if comparison.passed else ("FAILED, accepted (--accept)" if accepted else "FAILED")
    grid = Table(title=f"Model vs {ref}: {verdict}", title_justify="left")
    for col, justify in (("metric", "left"), ("base", "right"), ("this change", "right"), ("change", "right")):
        grid.add_column(col, justify=justify)  # type: ignore[arg-type]
    grid.add_column("gate")
    for row in comparison.rows:
        gate = "-" if row.passed is None else ("PASS" if row.passed else f"FAIL (> {comparison.tolerance:g} below)")
        grid.add_row(row.name, _fmt(row.base), _fmt(row.head), _fmt(row.delta, signed=True), gate)
    parts: list[Any] = [grid, Text(f"tolerance {comparison.tolerance:g}, from {comparison.tolerance_from}")]
    for heading, why, items in _sections(comparison):
        parts.append(Text(f"\n{heading} ({why}):\n" + "\n".join(f"  - {item}" for item in items)))
    return Group(*parts)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None where a level is missing or not a mapping."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _number(value: Any) -> float | None:
    """A YAML or JSON number as a float; None for anything else (booleans included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(value: float | None, signed: bool = False) -> str:
    """Four decimals for the table, "-" for a missing figure."""
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
