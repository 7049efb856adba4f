"""``mlrelease render compose``: a single-host docker compose project pinned to registered versions' image digests.

The versions' images come from the registry's tags written by ``mlrelease build`` (``image_digest``; ``image_ref``
for the repository unless one is given), looked up as ``render k8s`` does; replicas and timing from params.yaml's
``promotion:``; the fixed policy from deploy/compose/base.yaml. Files are written only when their text changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlrelease.core.errors import UserError
from mlrelease.core.params import PromotionParams
from registry.versions import Registry
from release.compose.options import ComposeOptions, Served, check_weight
from release.compose.router import nginx_conf
from release.compose.spec import ROUTER_DIR, compose_document
from release.k8s.render import release_of, resolve_version, write_text
from release.k8s.yamltext import dump, with_header

BASE, TEMPLATE = "base.yaml", "nginx.conf.tmpl"
COMPOSE_FILE, ROUTER_CONF = "compose.yaml", f"{ROUTER_DIR}/nginx.conf"
BASE_KEYS = ("server", "router", "network")


@dataclass(frozen=True)
class Rendered:
    """What a render produced: the served versions, the output folder, the files whose text changed."""

    served: list[Served]
    out: Path
    changed: list[Path] = field(default_factory=list)

    @property
    def compose_file(self) -> Path:
        """The rendered compose file."""
        return self.out / COMPOSE_FILE


def served_versions(
    registry: Registry,
    version: str | None,
    canary_version: str | None,
    weight: float,
    image_repository: str | None = None,
) -> list[Served]:
    """``stable`` (and ``canary`` at ``weight``, when above 0), each pinned to its version's image digest."""
    check_weight(weight, canary_version)
    stable = release_of(registry, resolve_version(registry, version, "production"), "production", image_repository)
    if weight == 0:
        return [Served("stable", stable, 100.0)]
    canary_number = resolve_version(registry, canary_version, "canary")
    if canary_number == stable.version:
        raise UserError(f"--canary-version names version {canary_number}, which is stable already: give another")
    canary = release_of(registry, canary_number, "production", image_repository)
    return [Served("stable", stable, round(100.0 - weight, 2)), Served("canary", canary, weight)]


def load_base(compose_dir: Path) -> tuple[dict[str, Any], str]:
    """base.yaml (the fixed policy) and the router's template; a missing or broken one is the user's to fix."""
    try:
        base = yaml.safe_load((compose_dir / BASE).read_text())
        template = (compose_dir / TEMPLATE).read_text()
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(
            f"{compose_dir}: cannot read {BASE} and {TEMPLATE} ({exc.__class__.__name__}); "
            "pass --compose-dir, the folder holding them (deploy/compose)"
        ) from exc
    if not isinstance(base, dict) or any(not isinstance(base.get(key), dict) for key in BASE_KEYS):
        raise UserError(f"{compose_dir / BASE}: needs the sections {', '.join(BASE_KEYS)} (see deploy/compose/)")
    return base, template


def command_line(served: list[Served]) -> str:
    """The render command that made compose.yaml (for its header); the weight is router/nginx.conf's alone, so a
    weight change leaves compose.yaml as it was (no container is replaced, the router reloads)."""
    said = f"mlrelease render compose --version {served[0].release.version}"
    if len(served) > 1:
        said += f" --canary-version {served[1].release.version} --canary-weight W"
    return said


def release_texts(
    served: list[Served], promotion: PromotionParams, options: ComposeOptions, base: dict[str, Any], template: str
) -> dict[str, str]:
    """File (relative to the output folder) -> text: the compose file and the router's config."""
    header = [
        f"Rendered by `{command_line(served)}`: do not edit.",
        "Sources: deploy/compose/base.yaml, params.yaml (promotion:), the registry's image_digest tags.",
        "The canary's weight W is in router/nginx.conf.",
        "Secrets: serving.env beside this file (MLRELEASE_API_KEY=...), never inline. docs/compose.md",
    ]
    document = compose_document(base, served, promotion, options)
    return {
        COMPOSE_FILE: with_header(header, dump(document)),
        ROUTER_CONF: nginx_conf(template, served[0].release.model_name, served, promotion.replicas),
    }


def render(
    served: list[Served],
    compose_dir: Path,
    out: Path,
    promotion: PromotionParams,
    options: ComposeOptions,
    dry_run: bool = False,
) -> Rendered:
    """Write the compose project for ``served`` into ``out`` (nothing on a dry run)."""
    base, template = load_base(compose_dir)
    texts = release_texts(served, promotion, options, base, template)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder; give a folder for compose.yaml and router/")
    changed = [] if dry_run else [out / name for name, text in sorted(texts.items()) if write_text(out / name, text)]
    return Rendered(served, out, changed)
