"""``mlrelease render k8s``: an environment's overlay pinned to a registered version, written under deploy/k8s.

The version's image comes from the registry's tags written by ``mlrelease build`` (``image_digest``, and
``image_ref`` for the repository unless one is given); the canary and timing from params.yaml. Files are written
only when their text changes, so rendering the same release twice leaves the same bytes (and mtimes).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlrelease.core.errors import UserError
from mlrelease.core.params import CanaryParams, PromotionParams
from registry.image import IMAGE_DIGEST_TAG, IMAGE_REF_TAG, untagged
from registry.versions import Registry, VersionNotFound
from release.k8s.manifests import ENVIRONMENTS, WORKLOAD, Release, release_files

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REPOSITORY = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")  # host[:port]/path, lower case (OCI distribution)
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"  # prometheus-operator's governing Service
COMPONENT = "release"  # the overlay's component folder the render writes


@dataclass(frozen=True)
class Rendered:
    """What a render wrote: the release, the component folder, and the files whose text changed."""

    release: Release
    folder: Path
    changed: list[Path] = field(default_factory=list)


def overlay(k8s_dir: Path, environment: str) -> Path:
    """The environment's kustomize overlay folder (deploy/k8s/overlays/ENV); a missing one is the user's to fix."""
    if environment not in ENVIRONMENTS:
        raise UserError(f"unknown environment {environment!r}; one of {', '.join(ENVIRONMENTS)}")
    folder = k8s_dir / "overlays" / environment
    if not (folder / "kustomization.yaml").is_file():
        raise UserError(
            f"{folder}/kustomization.yaml not found: pass --k8s-dir, the folder holding base/ and overlays/"
        )
    return folder


def namespace(k8s_dir: Path, environment: str) -> str:
    """The namespace the overlay deploys to (its kustomization's ``namespace:``)."""
    data: dict[str, Any] = yaml.safe_load((overlay(k8s_dir, environment) / "kustomization.yaml").read_text()) or {}
    return str(data.get("namespace") or "default")


def resolve_version(registry: Registry, given: str | None, environment: str) -> str:
    """A version number, or the version an alias names (default: the environment's own alias)."""
    name = given or environment
    if name.isdigit():
        try:
            return registry.require_registered(name)
        except VersionNotFound as exc:
            raise UserError(str(exc)) from exc
    version = registry.alias(name)
    if version is None:
        raise UserError(f"no version of {registry.model_name} has alias `{name}`; pass --version V (a number)")
    return version


def repository_of(image_ref: str | None, given: str | None, version: str) -> str:
    """The image repository the pods pull from: ``given``, else the build's ``image_ref`` without its tag."""
    found = given or None  # an empty MLRELEASE_IMAGE_REPOSITORY (an unset CI variable) is no repository
    if found is None and image_ref:
        found = untagged(image_ref)
    if not found or not REPOSITORY.match(found):
        raise UserError(
            f"version {version}: no usable image repository ({found or 'none'}); pass --image-repository "
            "(the registry the cluster pulls from, e.g. ghcr.io/team/model)"
        )
    return found


def release_of(registry: Registry, version: str, environment: str, image_repository: str | None = None) -> Release:
    """The registered version's release for ``environment``: its image pinned by the digest ``mlrelease build``
    recorded; one line naming `mlrelease build` when there is none."""
    tags = registry.tags(version)
    digest = tags.get(IMAGE_DIGEST_TAG, "")
    if not DIGEST.match(digest):
        raise UserError(
            f"version {version} has no image digest in the registry (tag image_digest): build its image first with "
            f"`mlrelease build --version {version}`"
        )
    return Release(
        environment=environment,
        model_name=registry.model_name,
        version=version,
        image=repository_of(tags.get(IMAGE_REF_TAG), image_repository, version),
        digest=digest,
        artifact_sha256=tags.get("artifact_sha256"),
    )


def write_text(path: Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds it; True when it changed."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def write_component(folder: Path, files: dict[str, str]) -> list[Path]:
    """The component's files, each written only if changed; a YAML file the release no longer has is removed."""
    changed = [folder / name for name, text in sorted(files.items()) if write_text(folder / name, text)]
    for stale in sorted(folder.glob("*.yaml")):
        if stale.name not in files:
            stale.unlink()
            changed.append(stale)
    return changed


def render(
    release: Release,
    k8s_dir: Path,
    canary: CanaryParams,
    promotion: PromotionParams,
    prometheus_url: str | None = None,
    dry_run: bool = False,
) -> Rendered:
    """Write the overlay's release component for ``release`` (nothing on a dry run)."""
    folder = overlay(k8s_dir, release.environment) / COMPONENT
    url = prometheus_url or canary.prometheus_url or DEFAULT_PROMETHEUS
    files = release_files(release, canary, promotion, url)
    changed = [] if dry_run else write_component(folder, files)
    return Rendered(release, folder, changed)


def rollout_commands(k8s_dir: Path) -> dict[str, str]:
    """The kubectl commands an on-call runs against production's Rollout (the Argo Rollouts kubectl plugin)."""
    ns = namespace(k8s_dir, "production")
    return {
        "abort": f"kubectl argo rollouts abort {WORKLOAD} -n {ns}",
        "undo": f"kubectl argo rollouts undo {WORKLOAD} -n {ns}",
        "status": f"kubectl argo rollouts get rollout {WORKLOAD} -n {ns}",
    }
