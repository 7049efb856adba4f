"""Where the release report's facts come from: the workspace's report files and the registry.

The workspace holds the pipeline's reports (gates, plots, metrics) of the model it last built, the staging load
test and canary reports of each version it released, and the audit log. The registry holds each version's tags
(lineage, metrics, params, image) and its training run's loss curve. Reading either never fails the report: a file
that is missing or unreadable is an empty dict, and the report says what it could not show.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlrelease.core.errors import UserError

log = logging.getLogger(__name__)
STALE_SLACK_S = 2.0  # a gate report this much newer than the registration is a later run's (checkouts write at once)
PIPELINE_GATE_REPORTS = ("evaluate_gates.json", "export.json", "metrics.json", "train_history.json")


@dataclass(frozen=True)
class VersionFacts:
    """One registered version as the registry has it."""

    model_name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    created_ms: int | None = None
    run_id: str | None = None


class RegistryView(Protocol):
    """What the report reads from the registry (the MLflow one in :class:`MlflowView`, a fake in tests)."""

    model_name: str

    def versions(self) -> list[str]:
        """Every registered version, oldest first."""
        ...

    def alias(self, alias: str) -> str | None:
        """The version an alias names, None when unset."""
        ...

    def facts(self, version: str) -> VersionFacts:
        """The version's aliases, tags, creation time and run."""
        ...

    def loss_history(self, run_id: str) -> list[dict[str, float]]:
        """The training run's per-epoch train and validation loss."""
        ...


class MlflowView:
    """The report's registry reads through registry.versions.Registry (one MlflowClient per command)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.model_name = str(registry.model_name)

    def versions(self) -> list[str]:
        found = self.registry.client.search_model_versions(f"name='{self.model_name}'")
        return [str(v) for v in sorted(int(m.version) for m in found)]

    def alias(self, alias: str) -> str | None:
        return self.registry.alias(alias)  # type: ignore[no-any-return]

    def facts(self, version: str) -> VersionFacts:
        mv = self.registry.client.get_model_version(self.model_name, version)
        return VersionFacts(
            model_name=self.model_name,
            version=str(mv.version),
            aliases=sorted(mv.aliases or []),
            tags=dict(mv.tags or {}),
            created_ms=int(mv.creation_timestamp) if mv.creation_timestamp else None,
            run_id=mv.run_id or None,
        )

    def loss_history(self, run_id: str) -> list[dict[str, float]]:
        """Per-epoch losses logged by the train stage (empty when the run is gone or another server's)."""
        from mlflow.exceptions import MlflowException

        client = self.registry.client
        try:
            rows: dict[int, dict[str, float]] = {}
            for key in ("train_loss", "val_loss"):
                for metric in client.get_metric_history(run_id, key):
                    rows.setdefault(int(metric.step), {"epoch": float(metric.step)})[key] = float(metric.value)
        except MlflowException as exc:
            log.warning("report: no loss history from run %s: %s", run_id, exc)
            return []
        return [rows[step] for step in sorted(rows)]


def resolve_version(view: RegistryView, requested: str | None, registration: dict[str, Any]) -> str:
    """The version to report: ``requested`` (a number or an alias), else the one this workspace's pipeline run
    registered, else ``candidate``, else the newest; a one-line error (exit 2) when there is none."""
    known = view.versions()
    if not known:
        raise UserError(
            f"the registry has no version of {view.model_name} (run the pipeline first: `mlrelease run`; "
            "or set MLFLOW_TRACKING_URI to the registry that has it)"
        )
    if requested:
        version = requested if requested.isdigit() else view.alias(requested)
        if version is None or version not in known:
            raise UserError(
                f"--version {requested}: no such version or alias of {view.model_name} "
                f"(registered versions: {', '.join(known)})"
            )
        return version
    registered = str(registration.get("version") or "")
    if registered in known and registration.get("model_name") in (None, view.model_name):
        return registered
    return view.alias("candidate") or known[-1]


@dataclass(frozen=True)
class Workspace:
    """The workspace's report files (reports/, models/, data/) and its deployment state folder."""

    home: Path

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    def require_reports(self) -> None:
        """A workspace without reports/ is not a project that ran anything: a one-line error (exit 2)."""
        if not self.reports.is_dir():
            raise UserError(
                f"no reports/ in {self.home}: run the pipeline first (`mlrelease run`), from the repository root "
                "or with MLRELEASE_HOME set to it"
            )

    def json(self, relative: str) -> dict[str, Any]:
        """A JSON report under the home (``reports/metrics.json``); empty when missing or unreadable."""
        path = self.home / relative
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("report: %s is unreadable (%s); left out", path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def report(self, name: str) -> dict[str, Any]:
        """A JSON report under reports/ (``metrics.json``); empty when missing or unreadable."""
        return self.json(f"reports/{name}")

    def pipeline_sha(self) -> str | None:
        """The sha256 of the model the workspace's last pipeline run registered (else the one it exported)."""
        registration = self.report("registration.json")
        sha = registration.get("artifact_sha256") or self.json("models/model_card.json").get("sha256")
        return str(sha) if sha else None

    def later_reports(self) -> list[str]:
        """Gate reports written after the registration: a later run's, which stopped before registering."""
        registration = self.reports / "registration.json"
        if not registration.is_file():
            return []
        registered = registration.stat().st_mtime
        return [
            name
            for name in PIPELINE_GATE_REPORTS
            if (self.reports / name).is_file() and (self.reports / name).stat().st_mtime > registered + STALE_SLACK_S
        ]

    def pipeline_reports_of(self, sha256: str | None) -> str | None:
        """None when the pipeline reports describe the model with this sha256; else why they do not."""
        mine = self.pipeline_sha()
        if mine is None:
            return "this workspace has no pipeline reports (`mlrelease run` writes them)"
        if sha256 is None or mine != sha256:
            return (
                "this workspace's pipeline reports describe another model "
                f"(sha256 {mine[:12]}…, this version's is {(sha256 or 'unknown')[:12]}…)"
            )
        later = self.later_reports()
        if later:
            return f"{', '.join(later)} were rewritten by a later pipeline run that registered nothing"
        return None
