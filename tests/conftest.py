"""Session fixtures: the real pipeline runs once (shared across xdist workers) and tests reuse its outputs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from tests.workspace import Workspace, copy_workspace, make_workspace, rebase_registry

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Slots run as processes from this virtualenv unless a test asks for the container runtime: a container story builds
# an image first (minutes), so the suite runs it once (tests/integration/test_container_runtime.py).
os.environ["MLRELEASE_RUNTIME"] = "process"

#: The order in which `make test` (xdist, --dist loadgroup) hands out the suite's parts: each worker takes the next
#: part (an xdist group, else one test) as it runs low, so the longest parts go first and the many short unit tests
#: last, to fill the gaps and let the two workers finish close together. The image group goes first: it waits for
#: the pipeline workspace (built_workspace), then builds the image, the longest chain; the serving group needs no
#: workspace, so the other worker starts there while the workspace is built. A path not listed goes after the
#: integration tests, in collection order.
SCHEDULE = (
    "tests/integration/test_image_build.py",
    "tests/integration/test_serving_",
    "tests/integration/test_supervision.py",
    "tests/integration/test_batch_scoring.py",  # Spark's start is long; the workspace it needs is built by then
    "tests/integration/test_loadtest.py",
    "tests/integration/test_rollback_incidents.py",
    "tests/integration/test_release_story.py",
    "tests/integration/test_team_registry.py",
    "tests/integration/test_data_sources.py",
    "tests/integration/test_pipeline_dvc.py",
    "tests/integration/test_target_failures.py",
    "tests/integration/",
    "tests/unit/",
)


def _place(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((i for i, prefix in enumerate(SCHEDULE) if path.startswith(prefix)), len(SCHEDULE) - 1)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # hand the parts out in SCHEDULE's order, not by their size


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop every supervisord a test of this process left running under its own temp folder (a target whose
    test did not call stop_all); each xdist worker stops only its own."""
    import signal

    import psutil

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    root = str(factory.getbasetemp())
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "supervisor.supervisord" in cmdline and root in cmdline:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_place)  # stable: collection order within each place


@pytest.fixture(autouse=True)
def _loggers_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-enable loggers for the test: an earlier test in this worker may have run dvc in process, whose logging
    setup disables every logger that existed then, and their lines would never reach caplog."""
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.disabled:
            monkeypatch.setattr(logger, "disabled", False)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by all xdist workers of this run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def built_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A repository copy in which `dvc repro` has run end to end (built once per test run, then reused)."""
    shared = _shared_dir(tmp_path_factory)
    root = shared / "pipeline-workspace"
    with FileLock(str(shared / "pipeline-workspace.lock")):
        done = root / ".built"
        if not done.exists():
            if root.exists():
                shutil.rmtree(root)
            ws = make_workspace(root)
            ws.dvc("repro")
            done.write_text("ok")
    return Workspace(root)


@pytest.fixture(scope="session")
def model_bundle(built_workspace: Workspace) -> Path:
    """The exported bundle folder (model.pt, model_card.json, reference_stats.json). Treat as read-only."""
    return built_workspace.root / "models"


@pytest.fixture(scope="session")
def registration(built_workspace: Workspace) -> dict[str, object]:
    return json.loads((built_workspace.root / "reports" / "registration.json").read_text())


@pytest.fixture
def registry_workspace(built_workspace: Workspace, tmp_path: Path) -> Iterator[Workspace]:
    """A private copy of the built workspace (registry, bundle, splits) that a test may change."""
    dest = tmp_path / "ws"
    copy_workspace(built_workspace.root, dest)
    rebase_registry(dest, built_workspace.root)  # new artifacts go into the copy, never the shared workspace
    yield Workspace(dest)
