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
    from deploy.image.build import (
        BuildParams,
        build,
        prune_after_build,
        record_on_registry,
        resolve_target,
        write_report,
    )
    from deploy.image.engine import detect_engine

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
) -> dict[str, object]:
    """Scan the project code, the Dockerfile and (when known) the built image; write the scan reports."""
    from deploy.image.engine import detect_engine
    from deploy.image.gate import run_scan as gate_scan
    from deploy.image.scan import ScanParams

    params = load_scan_params(params_path)
    assert isinstance(params, ScanParams)
    if with_image and image_ref is None and build_report is not None and build_report.is_file():
        image_ref = str(json.loads(build_report.read_text())["image_ref"])
    engine = detect_engine(engine_name) if with_image and image_ref else None
    return gate_scan(
        root,
        params,
        engine=engine,
        image_ref=image_ref,
        dockerfile=root / "deploy" / "docker" / "Dockerfile",
        out_dir=out_dir,
    )


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
