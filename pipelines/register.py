"""Stage `register`: a gated bundle becomes a model version in MLflow's registry, aliased `candidate`.

It refuses to run unless the evaluate and export gate reports both passed, and verifies the artifact's sha256,
so a model that failed a gate is never registered. Lineage tags: git commit, data hash from dvc.lock,
params hash, artifact sha256. The INT8 variant goes in as a second artifact (its own sha256 tag) only when the
export report's ``int8`` section passed and the card lists it; otherwise the FP32 version is registered alone and
reports/registration.json says why the variant was dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mlrelease.core.modelcard import FP32, INT8, ModelCard
from mlrelease.core.params import Params, load_params, run_stage
from pipelines.common import read_numeric, write_json

log = logging.getLogger(__name__)


class GateReportError(RuntimeError):
    """A gate report is missing or says a gate failed."""


def require_passed(*reports: Path) -> None:
    """Raise unless every gate report exists and says passed."""
    for path in reports:
        if not path.is_file():
            raise GateReportError(f"{path}: gate report missing; run `dvc repro` so every gate runs first")
        payload = json.loads(path.read_text())
        if not payload.get("passed"):
            failed = [g["name"] for g in payload.get("gates", []) if not g.get("passed")]
            raise GateReportError(f"{path}: gates failed {failed}; refusing to register")


def int8_decision(bundle: Path, export_report: Path) -> str | None:
    """None when the INT8 variant goes into the registry; else why it does not (the export report's reason)."""
    section = json.loads(export_report.read_text()).get(INT8) or {}
    listed = ModelCard.read(bundle).variants.get(INT8)
    if not section.get("passed"):
        return str(section.get("reason") or f"{export_report} has no passed {INT8} section (export again)")
    if listed is None:
        return f"{export_report} says the {INT8} variant passed, but the model card lists none (export again)"
    if section.get("sha256") != listed.sha256:
        return f"{export_report} and the model card name different {INT8} artifacts (export again)"
    return None


def variants_report(version: Any, dropped: str | None) -> dict[str, Any]:
    """registration.json's ``variants``: each artifact's sha256 as registered, or why INT8 is not there."""
    from registry.register import SHA_TAG, variant_tag

    tags = version.tags
    int8_sha = tags.get(variant_tag(INT8))
    int8: dict[str, Any] = {"registered": int8_sha is not None, "artifact_sha256": int8_sha}
    if dropped is not None:
        int8["reason"] = dropped
    return {FP32: {"registered": True, "artifact_sha256": tags.get(SHA_TAG)}, INT8: int8}


def pipeline_outputs(dvc_yaml: Path) -> set[str]:
    """The paths the pipeline writes itself (dvc.lock and every stage's outs, metrics and plots in dvc.yaml)."""
    doc = yaml.safe_load(dvc_yaml.read_text()) if dvc_yaml.is_file() else None
    paths = {"dvc.lock"}
    for stage in ((doc or {}).get("stages") or {}).values():
        wdir = stage.get("wdir", ".")
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                name = entry if isinstance(entry, str) else next(iter(entry))
                paths.add(posixpath.normpath(posixpath.join(wdir, name)))
    return paths


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10).stdout


def uncommitted_sources(cwd: Path = Path()) -> list[str]:
    """Tracked files that differ from HEAD, leaving out what the pipeline itself writes: a run of `dvc repro`
    rewrites dvc.lock and its committed reports before this stage, and that does not make the code dirty."""
    root = Path(_git(cwd, "rev-parse", "--show-toplevel").strip())
    outputs = pipeline_outputs(root / "dvc.yaml")
    changed = [p for p in _git(root, "diff", "HEAD", "--name-only", "--no-renames", "-z").split("\0") if p]
    return [p for p in changed if not any(p == out or p.startswith(f"{out}/") for out in outputs)]


def git_commit(cwd: Path = Path()) -> str:
    """HEAD's commit, suffixed `-dirty` when code, params or data definitions differ from it (the pipeline's own
    outputs aside); `unknown` outside git."""
    try:
        sha = _git(cwd, "rev-parse", "HEAD").strip()
        dirty = uncommitted_sources(cwd)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if dirty:
        log.warning("registering from uncommitted changes (git_commit %s-dirty): %s", sha[:12], ", ".join(dirty[:10]))
        return f"{sha}-dirty"
    return sha


def data_hash(lock: Path, splits: Path) -> str:
    """The prepared data's md5 as recorded by DVC in dvc.lock, else a sha256 over the split files."""
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("prepare", {}).get("outs", []):
            if out.get("md5"):
                return f"md5:{out['md5']}"
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update((splits / f"{name}.csv").read_bytes())
    return f"sha256:{digest.hexdigest()}"


def params_hash(params: Params) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()


def flat_params(params: Params) -> dict[str, Any]:
    return {
        **{f"model.{k}": v for k, v in params.model.model_dump().items()},
        **{f"train.{k}": v for k, v in params.train.model_dump().items()},
        "seed": params.seed,
        "data.source": params.data.source,
    }


def registry_problem(exc: Exception, run_id: str) -> str:
    """What went wrong with the registry, and what to do. The common case by name: the training run is on another
    server (MLFLOW_TRACKING_URI changed after `train` ran, which DVC cannot see), so the version would lose it."""
    from mlrelease.core.settings import get_settings

    uri = get_settings().tracking_uri
    if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" and run_id in str(exc):
        return (
            f"the training run {run_id} (models/train_run.json) is not in the registry at {uri}: train and "
            "register must log to the same MLflow server. Train there first: `dvc repro --force train`, then "
            "`dvc repro`"
        )
    return f"the registry at {uri} refused or could not be reached ({exc}); check MLFLOW_TRACKING_URI, then `dvc repro`"


def main(argv: list[str] | None = None) -> int:
    """DVC entry point: check gates, register (or reuse) the version, write reports/registration.json."""
    from mlflow.exceptions import MlflowException

    from mlrelease.core.modelcard import IntegrityError
    from registry.register import register_bundle

    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("bundle", "splits", "run-info", "metrics", "eval-gates", "export-report", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    run_id = ""
    try:
        require_passed(args.eval_gates, args.export_report)
        metrics = read_numeric(args.metrics)
        run_id = json.loads(args.run_info.read_text())["run_id"]
        dropped = int8_decision(args.bundle, args.export_report)
        if dropped is not None:
            log.warning("register: the %s variant is not registered: %s", INT8, dropped)
        tags = {
            "git_commit": git_commit(),
            "data_hash": data_hash(args.lock, args.splits),
            "params_hash": params_hash(params),
            "gates": f"evaluate=passed,export=passed,{INT8}={'dropped' if dropped else 'passed'}",
        }
        example = pd.read_csv(args.splits / "test.csv").drop(columns=[params.data.target]).head(5)
        version, created = register_bundle(
            args.bundle,
            params.model.name,
            metrics=metrics,
            params=flat_params(params),
            tags=tags,
            run_id=run_id,
            example=example,
            variants=() if dropped else (INT8,),
        )
    except (GateReportError, IntegrityError, ValueError, KeyError) as exc:
        sys.stderr.write(f"register: {exc!r}; nothing was registered\n")
        return 1
    except MlflowException as exc:
        sys.stderr.write(f"register: {registry_problem(exc, run_id)}; nothing was registered\n")
        return 1
    write_json(
        args.out,
        {
            "model_name": version.name,
            "version": int(version.version),
            "created": created,
            "aliases": sorted(version.aliases),
            "run_id": version.run_id,
            "artifact_sha256": version.tags.get("artifact_sha256"),
            "model_uri": f"models:/{version.name}/{version.version}",
            "variants": variants_report(version, dropped),
        },
    )
    log.info(
        "register: %s version %s (%s), variants: %s",
        version.name,
        version.version,
        "new" if created else "existing",
        version.tags.get("variants", FP32),
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("register", main))
