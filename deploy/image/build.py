"""``mlrelease build``: stage the context (wheelhouse + model bundle), build the image, smoke-test it, and record
its reference, digest and size in ``reports/build.json`` and on the MLflow model version."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from deploy.engine import (
    Engine,
    EngineError,
    bare_id,
    build_image,
    detect_engine,
    inspect_image,
    local_images,
    remove_image,
)
from deploy.image.base import cache_dir, ensure_base
from mlrelease.core.modelcard import CARD_FILE, MODEL_FILE, REFERENCE_FILE, verify_bundle
from mlrelease.core.params import HIGHER_IS_LAXER
from mlrelease.core.settings import Settings
from registry.image import IMAGE_DIGEST_TAG, IMAGE_REF_TAG

if TYPE_CHECKING:
    from mlrelease.core.progress import Progress

log = logging.getLogger(__name__)

DOCKER_DIR = Path(__file__).resolve().parent.parent / "docker"
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "healthcheck.py")
BUNDLE_FILES = (MODEL_FILE, CARD_FILE, REFERENCE_FILE)
TORCH_COMPILE_ONLY = ("sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "setuptools", "filelock")


class BuildParams(BaseModel):
    """The ``build:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._/-]{0,127}$")
    base_image: str = ""  # empty: Debian bookworm bootstrapped with mmdebstrap; else e.g. python:3.11-slim@sha256:...
    engine: str = Field("auto", pattern=r"^(auto|docker|podman|buildah)$")
    smoke_rows: int = Field(16, ge=1, le=1024)
    smoke_atol: float = Field(1e-6, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    ready_timeout_s: float = Field(180, gt=0)
    max_image_mb: float = Field(1500, gt=0)
    # torch's compiler-only dependencies: TorchScript inference never imports them (the smoke test proves it)
    exclude_packages: list[str] = Field(default_factory=lambda: list(TORCH_COMPILE_ONLY))


@dataclass(frozen=True)
class BuildTarget:
    """What is being built: the bundle folder and the registry identity it comes from."""

    bundle: Path
    model_name: str
    model_version: str  # registry version number, or "local" for a --model-dir build
    artifact_sha256: str


def git_commit(root: Path) -> str:
    """The short git commit of the tree being built ("nogit" outside a repository)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "nogit"
    return proc.stdout.strip() if proc.returncode == 0 else "nogit"


def image_tag(name: str, version: str, commit: str) -> str:
    """``NAME:VERSION-GITSHA``, with characters a tag cannot hold replaced."""
    safe_name = re.sub(r"[^a-z0-9._/-]", "-", name.lower())
    safe_tag = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{version}-{commit}")[:128]
    return f"{safe_name}:{safe_tag}"


def local_ref(engine: Engine, tag: str) -> str:
    """The name the engine stores a local image under: buildah and podman prefix ``localhost/`` unless the name
    starts with a registry host (a first component with a dot or a port, or ``localhost``: ``team/m`` has none)."""
    first, slash, _ = tag.partition("/")
    has_host = bool(slash) and ("." in first or ":" in first or first == "localhost")
    if engine.name in ("buildah", "podman") and not has_host:
        return f"localhost/{tag}"
    return tag


def _copy_if_changed(src: Path, dest: Path) -> None:
    if dest.is_file() and dest.read_bytes() == src.read_bytes():
        return
    shutil.copy2(src, dest)


def stage_context(context: Path, bundle: Path, project_root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Lay out the build context: Dockerfile and helpers, the model bundle, and the wheelhouse."""
    from deploy.image.wheelhouse import make_wheelhouse

    (context / "model").mkdir(parents=True, exist_ok=True)
    for name in CONTEXT_FILES:
        _copy_if_changed(DOCKER_DIR / name, context / name)
    for name in BUNDLE_FILES:
        _copy_if_changed(bundle / name, context / "model" / name)
    return make_wheelhouse(project_root, context / "wheels", cache_dir() / "wheels", exclude)


def commit_time(root: Path) -> str:
    """The commit's timestamp (ISO 8601): a build-time label that stays the same when nothing changed."""
    try:
        proc = subprocess.run(
            ["git", "log", "-1", "--format=%cI"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def resolve_target(
    model_dir: Path | None, version: str | None, model_name: str, dest: Path, settings: Settings | None = None
) -> BuildTarget:
    """The bundle to build: a local folder (version "local"), or a registry version/alias downloaded to ``dest``."""
    if model_dir is not None:
        card = verify_bundle(model_dir)
        return BuildTarget(model_dir, card.name, "local", card.sha256)
    from registry.register import download_bundle, resolve_version

    mv = resolve_version(model_name, version or "candidate", settings)
    bundle = download_bundle(str(mv.version), str(mv.name), dest, settings)
    sha = (mv.tags or {}).get("artifact_sha256") or verify_bundle(bundle).sha256
    return BuildTarget(bundle, str(mv.name), str(mv.version), sha)


def record_on_registry(target: BuildTarget, report: dict[str, object], settings: Settings | None = None) -> None:
    """Tag the MLflow model version with the image it was built into (nothing for a local build)."""
    if target.model_version == "local":
        return
    from registry.client import get_client

    client = get_client(settings)
    for key in (IMAGE_REF_TAG, IMAGE_DIGEST_TAG, "image_size_bytes"):
        client.set_model_version_tag(target.model_name, target.model_version, key, str(report[key]))


def superseded(
    images: list[tuple[str, list[str]]], ref: str, version_prefix: str | None, previous_id: str | None
) -> list[str]:
    """What a finished build of ``ref`` leaves unreferenced: the same model version's images of other commits
    (``PREFIX<commit>``; the registry's ``image_ref`` now names ``ref``) and the image ``ref`` named before, once
    untagged. Other versions' images stay, and so does any other tag (say ``3-approved``); with no
    ``version_prefix`` only the untagged image goes.
    """
    commit_tag = re.compile(re.escape(version_prefix) + r"(?:[0-9a-f]{7,40}|nogit)$") if version_prefix else None
    found = [n for _, names in images for n in names if commit_tag and commit_tag.match(n) and n != ref]
    previous = bare_id(previous_id) if previous_id else None
    new_id = next((image_id for image_id, names in images if ref in names), None)
    if previous and previous != new_id and any(i == previous and not n for i, n in images):
        found.append(previous)
    return found


def prune_superseded(engine: Engine, ref: str, version_prefix: str | None, previous_id: str | None) -> list[str]:
    """Remove the images ``superseded`` names (a removal that fails, say an image in use, is left and logged)."""
    removed = []
    for name in superseded(local_images(engine), ref, version_prefix, previous_id):
        try:
            gone = remove_image(engine, name, force=False)
        except (EngineError, OSError) as exc:  # a timeout, say: the next one may still go
            log.warning("could not remove the superseded image %s: %s", name, exc)
            continue
        if gone:
            removed.append(name)
        else:
            log.warning("could not remove the superseded image %s; remove it by hand once unused", name)
    if removed:
        log.info("removed %d superseded image(s): %s", len(removed), ", ".join(removed))
    return removed


def prune_after_build(
    engine: Engine, report: Mapping[str, object], params: BuildParams, target: BuildTarget
) -> list[str]:
    """Remove what the build in ``report`` superseded, once its image passed the smoke test and the registry names
    it; never fails the build (what could not be removed is logged). A local build keeps the images of other
    commits: other bundles share its version ``local``, and no registry record moved to the new image."""
    smoke = report.get("smoke")
    if not (isinstance(smoke, dict) and smoke.get("passed")):
        return []
    repository = params.image_name or target.model_name
    prefix = (
        None if target.model_version == "local" else local_ref(engine, image_tag(repository, target.model_version, ""))
    )
    replaced = report.get("replaced_image_id")
    try:
        return prune_superseded(engine, str(report["image_ref"]), prefix, str(replaced) if replaced else None)
    except (EngineError, OSError, ValueError, KeyError) as exc:
        log.warning("the images this build superseded were not removed: %s", exc)
        return []


def _image_id(engine: Engine, ref: str) -> str | None:
    """The id of the image ``ref`` names now, or None when there is none."""
    try:
        return str(inspect_image(engine, ref)["id"])
    except EngineError:
        return None


# buildah and podman: "[2/3] STEP 4/7: RUN ..." (the stage prefix only in multi-stage builds); docker (BuildKit):
# "#8 [app 2/3] RUN ..."
ENGINE_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\] )?STEP (\d+)/(\d+): (.*)$")
BUILDKIT_STEP = re.compile(r"^#\d+ \[(?:[\w.-]+ )?(\d+)/(\d+)\] (.*)$")


def step_progress(bar: Progress) -> Callable[[str], None]:
    """What moves the build's progress: each step line of the engine's output (stages done of all, and the step)."""

    def on_line(line: str) -> None:
        step = ENGINE_STEP.match(line)
        if step is not None:
            stage, stages, n, steps, what = step.groups()
            done = int(stage or 1) - 1 + (int(n) - 1) / int(steps)
            bar.update(done, total=int(stages or 1), step=f"{n}/{steps} {what[:60]}")
            return
        kit = BUILDKIT_STEP.match(line)
        if kit is not None:
            bar.update(step=f"{kit[1]}/{kit[2]} {kit[3][:60]}")

    return on_line


def build_with_progress(engine: Engine, context: Path, ref: str, build_args: dict[str, str]) -> None:
    """Build the image, its steps shown as they run (a bar on a terminal, else a log line every few seconds)."""
    from mlrelease.core.progress import progress  # shows progress only: no dependency of the build's result

    started = dt.datetime.now(dt.UTC)
    with progress("image build", unit="stages", log=log) as bar:
        build_image(engine, context, ref, build_args, on_line=step_progress(bar))
        bar.update(bar.total or 1)
        bar.note(f"built {ref} in {(dt.datetime.now(dt.UTC) - started).total_seconds():.0f} s")


def build(
    target: BuildTarget,
    params: BuildParams,
    project_root: Path,
    *,
    engine: Engine | None = None,
    base_image: str | None = None,
    context: Path | None = None,
    smoke: bool = True,
    data_csv: Path | None = None,
) -> dict[str, object]:
    """Build (with cache), check the size budget, smoke-test; return the build report."""
    from deploy.image.smoke import reference_inputs, smoke_test

    engine = engine or detect_engine(None if params.engine == "auto" else params.engine)
    verify_bundle(target.bundle, target.artifact_sha256)
    commit = git_commit(project_root)
    ref = local_ref(engine, image_tag(params.image_name or target.model_name, target.model_version, commit))
    replaced = _image_id(engine, ref)  # a rebuild moves the tag off it
    base = base_image or params.base_image or ensure_base(engine)
    context = context or project_root / "build" / "image-context"
    started = dt.datetime.now(dt.UTC)
    pins = stage_context(context, target.bundle, project_root, tuple(params.exclude_packages))
    build_args = {
        "BASE_IMAGE": base,
        "MODEL_NAME": target.model_name,
        "MODEL_VERSION": target.model_version,
        "ARTIFACT_SHA256": target.artifact_sha256,
        "GIT_COMMIT": commit,
        "BUILD_CREATED": commit_time(project_root),
    }
    build_with_progress(engine, context, ref, build_args)
    facts = inspect_image(engine, ref)
    size = int(str(facts["size_bytes"]))
    if size > params.max_image_mb * 1e6:
        raise RuntimeError(f"{ref} is {size / 1e6:.0f} MB, over build.max_image_mb={params.max_image_mb:g}")
    report: dict[str, object] = {
        "image_ref": ref,
        "image_id": facts["id"],
        "replaced_image_id": replaced,
        "image_digest": facts["digest"],
        "image_size_bytes": size,
        "image_size_mb": round(size / 1e6, 1),
        "layers": facts["layers"],
        "engine": engine.name,
        "base_image": base,
        "model_name": target.model_name,
        "model_version": target.model_version,
        "artifact_sha256": target.artifact_sha256,
        "git_commit": commit,
        "packages": pins,
        "build_seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
    }
    if smoke:
        rows = reference_inputs(target.bundle, params.smoke_rows, data_csv)
        report["smoke"] = smoke_test(
            engine, ref, target.bundle, rows, params.smoke_atol, params.ready_timeout_s
        ).as_dict()
    return report


def write_report(report: dict[str, object], path: Path) -> Path:
    """Write the build report as JSON (the dvc stage's output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
