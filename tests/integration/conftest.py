"""The image tests' shared session fixtures: the engine, and the pipeline bundle's image built once per run (the
image group runs on one worker, so its modules share that build)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.engine import Engine, detect_engine
from deploy.image.build import BuildParams, BuildTarget, build
from mlrelease.core.modelcard import ModelCard

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def engine() -> Engine:
    return detect_engine("buildah")


def _image_names(engine: Engine) -> dict[str, str]:
    """Every image in the engine's storage, cached layers included: id -> name."""
    listed = engine.run("images", "--all", "--format", "{{.ID}} {{.Name}}").stdout.split("\n")
    return dict(line.split(maxsplit=1) for line in listed if " " in line.strip())


@pytest.fixture(scope="session")
def leaves_no_images(engine: Engine) -> Iterator[None]:
    """Images and cached layers this run creates are removed at its end: each run's sources differ, so on a CI
    machine they would pile up (about 0.9 GB a run with vfs). The base image stays, so the next run reuses it."""
    before = set(_image_names(engine))
    yield
    created = [i for i, name in _image_names(engine).items() if i not in before and "mlrelease-base" not in name]
    if created:
        engine.run("rmi", "-f", *created, check=False)


@pytest.fixture(scope="session")
def image_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-context")


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the sources the project wheel is built from, so "nothing changed" holds during the run."""
    dest = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    for name in ("mlrelease", "pipelines", "release", "registry", "deploy", "requirements"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="session")
def built(engine: Engine, model_bundle: Path, image_context: Path, project: Path) -> dict[str, object]:
    """Build and smoke-test the image of the pipeline's bundle once per run."""
    card = ModelCard.read(model_bundle)
    target = BuildTarget(model_bundle, card.name, "local", card.sha256)
    return build(target, BuildParams(), project, engine=engine, context=image_context)
