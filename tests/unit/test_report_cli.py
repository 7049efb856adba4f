"""``mlrelease report``'s mistakes end in one line and exit 2: no workspace, no reports, an unreachable registry, a
bad flag (no traceback; no process is started)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlrelease.cli import app

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "MLRELEASE_REGISTRY_TIMEOUT_S": "2"}


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read afresh; the registry only from the case; MLflow's request settings restored after."""
    from mlrelease.core.settings import get_settings
    from registry.client import BRIEF_REQUESTS, OUTER_ENV_VAR, TIMEOUT_VAR

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", TIMEOUT_VAR, OUTER_ENV_VAR, *BRIEF_REQUESTS):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def place(root: Path, kind: str) -> Path:
    """A folder that is no workspace, a project without reports, or one whose pipeline registered a version."""
    root.mkdir(parents=True)
    if kind in ("project", "registered"):
        shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    if kind == "registered":
        (root / "reports").mkdir()
        registration = {"model_name": "breast-cancer-classifier", "version": 1, "artifact_sha256": "aa"}
        (root / "reports" / "registration.json").write_text(json.dumps(registration))
    return root


CASES = [
    ("not a workspace", "nowhere", ["report"], {}, "no mlrelease project"),
    ("no reports", "project", ["report"], {}, "no reports/ in"),
    ("unreachable registry", "registered", ["report", "--version", "1"], UNREACHABLE, "registry"),
    ("bad flag", "registered", ["report", "--out"], {}, "--out"),
]


@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize(("case", "kind", "args", "env", "said"), CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_exit_2(
    case: str, kind: str, args: list[str], env: dict[str, str], said: str, tmp_path: Path, monkeypatch
) -> None:
    home = place(tmp_path / "home", kind)
    monkeypatch.chdir(home)
    monkeypatch.setenv("MLRELEASE_HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = f"exit {result.exit_code} {result.exception!r}\n{result.output}"
    assert result.exit_code == 2 and "Traceback" not in result.output, shown
    assert len(lines) == 1 and said in lines[0], shown
    assert not list(home.glob("reports/release_v*.html"))
