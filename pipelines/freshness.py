"""Which reports in reports/ this workspace's latest pipeline run wrote, and which are older: committed reports in a
fresh clone, or reports whose stage's inputs changed since. ``mlrelease summary`` says which is which.

DVC knows: ``dvc status`` compares every stage's inputs and outputs with dvc.lock. A report of a stage with no
change is this run's (dvc.lock records it). A report that differs from dvc.lock was written after it: its stage
ran here and failed (a gate) — the latest attempt, so this run's too, and so are that stage's other reports (a
deterministic stage rewrites some with the same bytes). A report as dvc.lock records it, while its stage's inputs
are missing (a fresh clone: data/ and models/ are not committed) or changed, is stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
REPORTS_PREFIX = "reports/"


@dataclass(frozen=True)
class ReportState:
    """Whether a report is this run's (``fresh``), the stage that writes it, and why, in a few words."""

    path: str
    stage: str
    fresh: bool
    why: str

    @property
    def label(self) -> str:
        """``this run`` or ``stale``, for a table column."""
        return "this run" if self.fresh else "stale"


def lock_outputs(lock: Path) -> dict[str, list[str]]:
    """The reports each stage of ``lock`` (dvc.lock) records as its outputs."""
    doc = yaml.safe_load(lock.read_text()) if lock.is_file() else None
    stages = (doc or {}).get("stages") or {}
    return {
        name: [out["path"] for out in stage.get("outs") or [] if str(out.get("path", "")).startswith(REPORTS_PREFIX)]
        for name, stage in stages.items()
    }


def _changes(entries: list[Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """One stage's ``dvc status`` entries as (changed deps, changed outs, other changes such as the command)."""
    deps: dict[str, Any] = {}
    outs: dict[str, Any] = {}
    other: list[str] = []
    for entry in entries:
        if isinstance(entry, dict):
            deps.update(entry.get("changed deps") or {})
            outs.update(entry.get("changed outs") or {})
            other += [key for key in entry if key not in ("changed deps", "changed outs")]
        else:
            other.append(str(entry))
    return deps, outs, other


def _why_stale(deps: dict[str, Any], other: list[str]) -> str:
    """Why a report dvc.lock records is not this run's: its stage's inputs are missing here, or changed since."""
    missing = sorted(path for path, change in deps.items() if change == "deleted")
    if missing:
        return f"the committed one; its stage has not run in this workspace ({', '.join(missing)} missing)"
    changed = sorted(
        f"{path} ({', '.join(change)})" if isinstance(change, dict) else path for path, change in deps.items()
    )
    return f"its stage's inputs changed since it ran ({', '.join(changed + other) or 'see `dvc status`'})"


def classify(status: dict[str, list[Any]], outputs: dict[str, list[str]]) -> dict[str, ReportState]:
    """Each report's state from ``dvc status`` (``status``) and the reports each stage records (``outputs``)."""
    states = {}
    for stage, paths in outputs.items():
        deps, outs, other = _changes(status.get(stage, []))
        ran_since = any(outs.get(path) == "modified" for path in paths)  # its other reports: rewritten, same bytes
        for path in paths:
            if stage not in status:
                states[path] = ReportState(path, stage, True, "as dvc.lock records it, inputs unchanged")
            elif ran_since and outs.get(path) != "deleted":
                states[path] = ReportState(path, stage, True, "written after dvc.lock: its stage ran and failed")
            elif outs.get(path) != "deleted":
                states[path] = ReportState(path, stage, False, _why_stale(deps, other))
    return states


def dvc_status(root: Path) -> dict[str, list[Any]]:
    """``dvc status`` of the pipeline in ``root`` (its dvc.yaml only), in process."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return dict(repo.status(targets=[str(root / "dvc.yaml")]))


def report_states(root: Path = Path()) -> dict[str, ReportState]:
    """The state of every report dvc.lock records in ``root``; empty when there is no pipeline there, or DVC
    cannot tell (the reason is logged): then nothing is claimed about them."""
    if not (root / "dvc.yaml").is_file() or not (root / "dvc.lock").is_file():
        return {}
    from dvc.exceptions import DvcException

    try:
        return classify(dvc_status(root), lock_outputs(root / "dvc.lock"))
    except (DvcException, OSError, yaml.YAMLError) as exc:
        log.warning("cannot tell which reports are this run's (dvc status failed: %s)", exc)
        return {}
