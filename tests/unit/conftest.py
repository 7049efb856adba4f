"""Unit tests start no process: a test that does fails here, unless it is marked ``integration`` (then `make
test-unit` leaves it out and `make test` runs it)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import make_fake_bundle

# platform.processor() runs `uname -p` once and caches it; a library that asks for it on import (MLflow does) would
# otherwise start that process inside whichever unit test imports it first
platform.processor()


@pytest.fixture(autouse=True)
def _no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse subprocess.Popen (run, check_output and friends go through it) in an unmarked unit test."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"a unit test started a process ({args!r}): mark it `integration` or move it to tests/integration"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle for the fake target and registry (made once: placeholder weights, real card and stats)."""
    return make_fake_bundle(tmp_path_factory.mktemp("fake-bundle"))
