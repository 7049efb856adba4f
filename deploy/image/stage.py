"""The ``build`` and ``scan`` DVC stages: ``python -m deploy.image.stage build|scan [options]``.

Both read their policy from params.yaml (sections ``build:`` and ``scan:``) and write reports under reports/.
The exit code is 0 when the stage passed, 1 when a gate failed, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploy.engine import Engine
    from mlrelease.core.settings import Settings

log = logging.getLogger(__name__)


def load_build_params(params_path: Path) -> tuple[object, str]:
    """(BuildParams, model name) from params.yaml."""
    from deploy.image.build import BuildParams
    from mlrelease.core.params import load_params, section

    params = load_params(params_path)
    return section(params, "build", BuildParams), params.model.name


def load_scan_params(params_path: Path) -> object:
    """ScanParams from params.yaml."""
    from deploy.image.scan import ScanParams
    from mlrelease.core.params import load_params, section

    return section(load_params(params_path), "scan", ScanParams)


def run_build(
    root: Path,
    params_path: Path,
    model_dir: Path | None,
    version: str | None,
    report_path: Path,
    base_image: str | None = None,
    smoke: bool = True,
    engine_name: str | None = None,
    settings: Settings | None = None,
) -> dict[str, object]:
    """Resolve the bundle, build and smoke-test the image, write the report and tag the registry version."""
    from deploy.engine import detect_engine
    from deploy.image.build import (
        BuildParams,
        build,
        prune_after_build,
        record_on_registry,
        resolve_target,
        write_report,
    )

    build_params, model_name = load_build_params(params_path)
    assert isinstance(build_params, BuildParams)
    engine = detect_engine(engine_name or (None if build_params.engine == "auto" else build_params.engine))
    with tempfile.TemporaryDirectory(prefix="mlrelease-bundle-") as tmp:
        target = resolve_target(model_dir, version, model_name, Path(tmp) / "bundle", settings)
        report = build(
            target,
            build_params,
            root,
            engine=engine,
            base_image=base_image,
            smoke=smoke,
            data_csv=root / "data" / "prepared" / "test.csv",
        )
    write_report(report, report_path)
    record_on_registry(target, report, settings)
    report["removed_images"] = prune_after_build(engine, report, build_params, target)
    write_report(report, report_path)
    return report


def run_scan(
    root: Path,
    params_path: Path,
    image_ref: str | None,
    build_report: Path | None,
    out_dir: Path,
    engine_name: str | None = None,
    with_image: bool = True,
    settings: Settings | None = None,
) -> dict[str, object]:
    """Scan the project code, the Dockerfile and (when known) the built image; write the scan reports, and record
    the image's verdict on the registry version it was built from (``recorded`` in the returned report)."""
    from deploy.engine import detect_engine, inspect_image
    from deploy.image.gate import run_scan as gate_scan
    from deploy.image.scan import ScanParams

    params = load_scan_params(params_path)
    assert isinstance(params, ScanParams)
    built = _read_build_report(build_report)
    if with_image and image_ref is None and built is not None:
        image_ref = str(built["image_ref"])
    engine = detect_engine(engine_name) if with_image and image_ref else None
    facts = inspect_image(engine, image_ref) if engine is not None and image_ref else None
    report = gate_scan(
        root,
        params,
        engine=engine,
        image_ref=image_ref,
        dockerfile=root / "deploy" / "docker" / "Dockerfile",
        out_dir=out_dir,
    )
    if engine is not None and image_ref and facts is not None:
        record_verdict(engine, image_ref, facts, built, report, settings)
    return report


def record_verdict(
    engine: Engine,
    image_ref: str,
    facts: dict[str, object],
    built: dict[str, object] | None,
    report: dict[str, object],
    settings: Settings | None = None,
) -> None:
    """Record the scan's verdict on the registry version the image was built from (``facts``: the image as read
    before the scan); add ``image_digest`` and ``recorded`` to ``report``. A tag moved meanwhile records nothing."""
    from deploy.engine import inspect_image

    digest = str(facts["digest"])
    after = str(inspect_image(engine, image_ref)["digest"])
    if after != digest:  # the verdict may be about either image
        raise RuntimeError(f"{image_ref} changed during the scan ({digest} -> {after}); nothing recorded: scan again")
    config = facts.get("config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    origin = scan_origin(built, image_ref, digest, labels if isinstance(labels, dict) else {})
    report["image_digest"] = digest
    report["recorded"] = _record(origin, digest, bool(report["passed"]), settings)


def _read_build_report(path: Path | None) -> dict[str, object] | None:
    """reports/build.json's content, or None when there is none."""
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None


def scan_origin(
    built: dict[str, object] | None, image_ref: str, digest: str, labels: dict[str, object]
) -> tuple[str, str] | None:
    """(model name, registry version) the scanned image was built from: the build report's when it names this image
    (by reference or digest), else the image's own labels; None for a local build or an image of unknown origin."""
    if built is not None and (built.get("image_ref") == image_ref or built.get("image_digest") == digest):
        name, version = built.get("model_name"), built.get("model_version")
    else:
        name, version = labels.get("io.mlrelease.model.name"), labels.get("org.opencontainers.image.version")
    if not name or not version or str(version) == "local":
        return None
    return str(name), str(version)


def _record(origin: tuple[str, str] | None, digest: str, passed: bool, settings: Settings | None) -> str | None:
    """Write the verdict on the registry version; what was recorded (e.g. "breast-cancer-classifier v3"), or None."""
    if origin is None:
        log.info("scan verdict not recorded in the registry: a local build, or an image of no registered version")
        return None
    from registry.image import record_scan

    record_scan(origin[0], origin[1], digest, passed, settings)
    log.info("recorded image_scan=%s for %s version %s", "passed" if passed else "failed", *origin)
    return f"{origin[0]} v{origin[1]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.image.stage", description=__doc__)
    parser.add_argument("stage", choices=["build", "scan"])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model-dir", type=Path, help="build a local bundle folder (version 'local')")
    parser.add_argument("--version", help="registry version number or alias (default: candidate)")
    parser.add_argument("--base-image", help="override build.base_image (e.g. python:3.11-slim@sha256:...)")
    parser.add_argument("--engine", choices=["docker", "podman", "buildah"])
    parser.add_argument("--image", help="image to scan (default: image_ref from reports/build.json)")
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the dvc stages."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    root = Path.cwd()
    try:
        if args.stage == "build":
            run_build(
                root,
                args.params,
                args.model_dir,
                args.version,
                args.reports / "build.json",
                args.base_image,
                engine_name=args.engine,
            )
            return 0
        report = run_scan(root, args.params, args.image, args.reports / "build.json", args.reports, args.engine)
    except Exception as exc:
        log.error("%s stage failed: %s", args.stage, exc)
        return 1
    summary = args.reports / "scan.md"
    if summary.is_file():
        sys.stdout.write(summary.read_text())
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
