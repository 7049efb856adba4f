"""``mlrelease render k8s``: a registered version's kustomize overlay for Kubernetes and Argo Rollouts; and the
Kubernetes rollback that ``scripts/rollback.sh --target kubernetes`` runs. Parse, call release.k8s, print.
``mlrelease render compose``: the same versions as a single-host docker compose project (release.compose)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mlrelease.commands.common import PARAMS

if TYPE_CHECKING:
    from registry.versions import Registry
    from release.k8s.bookkeeping import Books
    from release.k8s.rollback import Where


class K8sEnv(StrEnum):
    """The environments deploy/k8s has an overlay for."""

    staging = "staging"
    production = "production"


K8S_DIR = typer.Option(Path("deploy/k8s"), "--k8s-dir", help="the kustomize tree holding base/ and overlays/")
IMAGE_REPOSITORY = typer.Option(
    None,
    "--image-repository",
    envvar="MLRELEASE_IMAGE_REPOSITORY",
    help="where the cluster pulls the image from (default: the build's image_ref without its tag)",
)
PROMETHEUS_URL = typer.Option(
    None,
    "--prometheus-url",
    help="Prometheus for the AnalysisTemplates (default: canary.prometheus_url, else "
    "http://prometheus-operated.monitoring.svc:9090)",
)
BY = typer.Option(None, "--by", help="Who acts (default: MLRELEASE_BY, GITHUB_ACTOR, git user.email, OS user)")


def _where(params_path: Path, k8s_dir: Path, image_repository: str | None, prometheus_url: str | None) -> Where:
    """The params and paths a render needs, read from params.yaml."""
    from mlrelease.core.params import CanaryParams, PromotionParams, load_params, section
    from release.k8s.rollback import Where

    params = load_params(params_path)
    return Where(
        k8s_dir=k8s_dir,
        canary=section(params, "canary", CanaryParams),
        promotion=section(params, "promotion", PromotionParams),
        image_repository=image_repository,
        prometheus_url=prometheus_url,
    )


def _books(params_path: Path, by: str | None) -> Books:
    """The registry of params.yaml's model and the audit log of MLRELEASE_HOME, for ``by``."""
    from mlrelease.core.params import load_params
    from mlrelease.core.settings import get_settings
    from registry.versions import Registry
    from release.audit import resolve_actor
    from release.k8s.bookkeeping import Books

    settings = get_settings()
    registry = Registry(load_params(params_path).model.name, settings)
    return Books(registry=registry, state_dir=settings.state_dir, by=resolve_actor(by))


def k8s_command(
    env: K8sEnv = typer.Option(..., "--env", help="the overlay to render"),
    version: str = typer.Option(None, "--version", help="version number or alias (default: the env's alias)"),
    k8s_dir: Path = K8S_DIR,
    image_repository: str = IMAGE_REPOSITORY,
    prometheus_url: str = PROMETHEUS_URL,
    params: Path = PARAMS,
    record: str = typer.Option(
        None,
        "--record",
        help="production only: the overlay was delivered (say where: a pull request or commit); "
        "the alias production moves to the version and the audit trail records it",
    ),
    reason: str = typer.Option(None, "--reason", help="why (with --record, recorded in the audit trail)"),
    by: str = BY,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be written; write nothing"),
) -> None:
    """Write an environment's Kubernetes overlay (deploy/k8s/overlays/ENV/release/) pinned to a version.

    Its image by digest, its version labels, and in production the Argo Rollouts canary and AnalysisTemplates from
    params.yaml. The same version renders the same bytes. Kubernetes: docs/kubernetes.md."""
    from release.k8s.bookkeeping import record_delivery
    from release.k8s.render import release_of, render, resolve_version

    if record is not None and env is not K8sEnv.production:
        raise typer.BadParameter("--record is for production (the alias production moves)", param_hint="--record")
    where = _where(params, k8s_dir, image_repository, prometheus_url)
    books = _books(params, by)
    pinned = resolve_version(books.registry, version, env.value)
    release = release_of(books.registry, pinned, env.value, where.image_repository)
    done = render(release, k8s_dir, where.canary, where.promotion, where.prometheus_url, dry_run=dry_run)
    changed = "would write" if dry_run else f"{len(done.changed)} file(s) changed"
    typer.echo(f"{done.folder}: version {pinned}, {release.image_ref} ({changed})")
    if record is not None and not dry_run:
        left = record_delivery(books, pinned, release.image_ref, record, reason)
        typer.echo(f"alias production -> {pinned} (was {left or 'none'}); recorded: delivered to Kubernetes ({record})")


def k8s_rollback_command(
    to: str = typer.Option(None, "--to", help="version to go back to (default: the previous production version)"),
    reason: str = typer.Option(None, "--reason", help="why (recorded in the audit trail)"),
    by: str = BY,
    params: Path = PARAMS,
    k8s_dir: Path = K8S_DIR,
    image_repository: str = IMAGE_REPOSITORY,
    prometheus_url: str = PROMETHEUS_URL,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what it would do; change nothing"),
    target: str = typer.Option("kubernetes", "--target", hidden=True),
) -> None:
    """Kubernetes incident rollback: production rendered for the previous version, alias and audit moved back.

    Says the command that aborts the running Rollout; the rendered overlay goes to the deployment branch (the
    rollback workflow delivers it). Runbook: docs/kubernetes.md."""
    from release.k8s.rollback import rollback

    outcome = rollback(
        _books(params, by), _where(params, k8s_dir, image_repository, prometheus_url), to, reason, dry_run
    )
    typer.echo(f"rollback (kubernetes{', dry run' if dry_run else ''})")
    for line in outcome.lines:
        typer.echo(f"  {line}")
    raise typer.Exit(outcome.exit_code)


def _registry(params_path: Path) -> Registry:
    """The registry of params.yaml's model."""
    from mlrelease.core.params import load_params
    from mlrelease.core.settings import get_settings
    from registry.versions import Registry

    return Registry(load_params(params_path).model.name, get_settings())


def compose_command(
    version: str = typer.Option(None, "--version", help="stable's version number or alias (default: production)"),
    canary_version: str = typer.Option(None, "--canary-version", help="the canary's version number or alias"),
    canary_weight: float = typer.Option(
        0.0, "--canary-weight", help="percent of requests for the canary; 0 = no canary service"
    ),
    out: Path = typer.Option(Path("build/compose"), "--out", help="folder for compose.yaml and router/nginx.conf"),
    compose_dir: Path = typer.Option(
        Path("deploy/compose"), "--compose-dir", help="the folder holding base.yaml and nginx.conf.tmpl"
    ),
    image_repository: str = typer.Option(
        None,
        "--image-repository",
        envvar="MLRELEASE_IMAGE_REPOSITORY",
        help="the registry repository the host pulls the images from (default: the build's image_ref without its tag)",
    ),
    publish: str = typer.Option("127.0.0.1:8080", "--publish", help="[IP:]PORT the router listens on, on the host"),
    cpus: float = typer.Option(None, "--cpus", help="CPU limit per server replica (default: base.yaml's)"),
    memory: str = typer.Option(
        None, "--memory", help="memory limit per server replica, e.g. 2g (default: base.yaml's)"
    ),
    subnet: str = typer.Option(None, "--subnet", help="the servers' IPv4 network (default: base.yaml's)"),
    router_image: str = typer.Option(None, "--router-image", help="the nginx image (default: base.yaml's)"),
    params: Path = PARAMS,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be written; write nothing"),
) -> None:
    """Write a single-host docker compose release (compose.yaml, router/nginx.conf) pinned to image digests.

    Services stable and canary (at --canary-weight) behind an nginx router; docs/compose.md."""
    from mlrelease.core.params import PromotionParams, load_params, section
    from release.compose.options import check_weight, options_of
    from release.compose.render import render, served_versions

    check_weight(canary_weight, canary_version)
    options = options_of(publish, cpus, memory, subnet, router_image)
    promotion = section(load_params(params), "promotion", PromotionParams)
    served = served_versions(_registry(params), version, canary_version, canary_weight, image_repository)
    done = render(served, compose_dir, out, promotion, options, dry_run=dry_run)
    changed = "would write" if dry_run else f"{len(done.changed)} file(s) changed"
    for slot in served:
        typer.echo(f"{slot.name}: version {slot.release.version}, {slot.release.image_ref}, {slot.weight:g}%")
    compose = f"docker compose -f {done.compose_file}"
    typer.echo(
        f"{done.compose_file} ({changed}); apply: {compose} up -d --remove-orphans --wait && "
        f"{compose} kill -s HUP router"
    )


def guarded(prog: str, call: Callable[[], object]) -> int:
    """Run a command; its exit code, or a usage mistake, a user's mistake or a registry error in one line (exit 2)."""
    from mlrelease.core.errors import UserError, one_line
    from mlrelease.core.params import ConfigFileError
    from registry.client import is_registry_error

    try:
        code = call()
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors: a bad option or value
        typer.echo(f"{prog}: {one_line(exc.format_message())} (see `{prog} --help`)", err=True)
        return exc.exit_code
    except (UserError, ConfigFileError) as exc:
        typer.echo(f"{prog}: {one_line(exc)}", err=True)
        return getattr(exc, "exit_code", 2)
    except Exception as exc:
        if not is_registry_error(exc):
            raise
        typer.echo(f"{prog}: the registry refused: {one_line(exc)} (check MLFLOW_TRACKING_URI)", err=True)
        return 2
    return code if isinstance(code, int) else 0


def rollback_main(argv: list[str]) -> int:
    """``scripts/rollback.sh --target kubernetes ARGS``: the Kubernetes rollback alone, errors in one line."""
    prog = "scripts/rollback.sh --target kubernetes"
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(k8s_rollback_command)
    command = typer.main.get_command(app)
    return guarded(prog, lambda: command.main(args=argv, prog_name=prog, standalone_mode=False))


def register(app: typer.Typer) -> None:
    """Add ``mlrelease render k8s`` and ``mlrelease render compose`` to the CLI."""
    render_app = typer.Typer(
        help="Render a release for a platform mlrelease does not run itself.", no_args_is_help=True
    )
    render_app.command("k8s")(k8s_command)
    render_app.command("compose")(compose_command)
    app.add_typer(render_app, name="render")
