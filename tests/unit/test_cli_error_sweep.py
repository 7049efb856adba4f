"""Every command answers a user's mistake in one line: a bad file, flag, folder, setting, an unreachable registry or
a workspace that is not one ends in exit 1 or 2 and one line on stderr, never a traceback.

The commands are enumerated from the app, so a new command without a row here fails the sweep. Each row fails
before a command would start a server, a process or long work (unit tests start no process: tests/unit/conftest).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mlrelease.cli import app, explain

REPO = Path(__file__).resolve().parents[2]
SCHEMA = str(REPO / "schemas" / "breast_cancer.yaml")
UNREACHABLE = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "MLRELEASE_REGISTRY_TIMEOUT_S": "2"}
NO_JAVA = {"JAVA_HOME": "/nonexistent/jdk-17"}


@dataclass(frozen=True)
class Row:
    """One bad input for one command: its arguments, where it runs, extra environment."""

    command: str
    case: str
    args: list[str]
    where: str = "nowhere"  # nowhere: a folder that is no workspace; project: params.yaml; registered: a registration
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.command}:{self.case}"


def rows() -> list[Row]:
    """The table of bad inputs, at least one per command."""
    return [
        Row("run", "not a workspace", ["run"]),
        Row("run", "bad flag", ["run", "--fresh", "extra"]),
        Row("demo", "not a workspace", ["demo"]),
        Row("summary", "not a workspace", ["summary"]),
        Row("summary", "unreachable registry", ["summary"], "registered", UNREACHABLE),
        Row("summary", "bad flag", ["summary", "--markdown=maybe"]),
        Row("compare", "missing flag", ["compare"]),
        Row("compare", "not a workspace", ["compare", "--base", "origin/main"]),
        Row("validate-data", "missing file", ["validate-data", "missing.csv", "--schema", SCHEMA]),
        Row("validate-data", "binary file", ["validate-data", "binary.csv", "--schema", SCHEMA]),
        Row("validate-data", "empty file", ["validate-data", "empty.csv", "--schema", SCHEMA]),
        Row("validate-data", "binary schema", ["validate-data", "sample.csv", "--schema", "binary.csv"]),
        Row("validate-data", "a CSV as schema", ["validate-data", "sample.csv", "--schema", "sample.csv"]),
        Row("validate-data", "bad schema", ["validate-data", "sample.csv", "--schema", "bad.yaml"]),
        Row("validate-data", "missing folder", ["validate-data", "sample.csv", "--schema", "nodir/s.yaml"]),
        Row("validate-data", "not a workspace", ["validate-data", "sample.csv"]),
        *infer_rows(),
        Row("serve", "missing folder", ["serve", "--model-dir", "nodir"]),
        Row("serve", "bad flag value", ["serve", "--port", "eighty"]),
        Row("loadtest", "not a workspace", ["loadtest", "--url", "http://127.0.0.1:1"]),
        Row("loadtest", "missing file", ["loadtest", "--url", "http://127.0.0.1:1", "--test-csv", "no.csv"], "project"),
        Row("loadtest", "missing flag", ["loadtest"]),
        Row("build", "not a workspace", ["build"]),
        Row("build", "bad flag", ["build", "--no-smoke=x"]),
        Row("scan", "not a workspace", ["scan", "--source-only"]),
        Row("promote", "not a workspace", ["promote", "staging"]),
        Row("promote", "bad flag value", ["promote", "prod"]),
        Row("promote", "unreachable registry", ["promote", "staging"], "project", UNREACHABLE),
        Row("rollback", "not a workspace", ["rollback"]),
        Row("rollback", "unreachable registry", ["rollback", "--to", "1"], "project", UNREACHABLE),
        Row("rollback", "bad flag", ["rollback", "--to"]),
        Row("reconcile", "not a workspace", ["reconcile"]),
        Row("down", "not a workspace", ["down"]),
        Row("down", "bad flag", ["down", "--yes=please"]),
        Row("status", "not a workspace", ["status"]),
        Row("history", "not a workspace", ["history"]),
        Row("history", "bad flag value", ["history", "--limit", "many"]),
        Row("render", "not a workspace", ["render", "k8s", "--env", "production"]),
        Row("render", "bad flag", ["render", "k8s", "--env", "prod"]),
        Row("render", "missing subcommand flag", ["render", "k8s"]),
        Row("render", "unreachable registry", ["render", "k8s", "--env", "production"], "registered", UNREACHABLE),
        Row("render", "compose bad weight", ["render", "compose", "--canary-version", "2", "--canary-weight", "150"]),
        Row("render", "compose weight without canary", ["render", "compose", "--canary-weight", "5"]),
        Row("render", "compose bad publish", ["render", "compose", "--publish", "localhost:http"]),
        Row("render", "compose not a workspace", ["render", "compose"]),
        Row("render", "compose unreachable registry", ["render", "compose"], "registered", UNREACHABLE),
        Row("report", "not a workspace", ["report"]),
        Row("report", "bad version", ["report", "--version", "no such version!"]),
        *score_rows(),
        Row("(none)", "unknown command", ["no-such-command"]),
        Row("(none)", "unknown option", ["--no-such-option", "status"]),
        Row("(none)", "bad setting", ["status"], env={"MLRELEASE_PORT": "eighty"}),
        Row("(none)", "bad registry timeout", ["status"], env={"MLRELEASE_REGISTRY_TIMEOUT_S": "soon"}),
    ]


def infer_rows() -> list[Row]:
    """infer-schema: every sample no contract can be drafted from, and every bad flag."""
    draft = ["--target", "target", "--out", "drafted.yaml"]
    return [
        Row("infer-schema", "missing file", ["infer-schema", "missing.csv", *draft]),
        Row("infer-schema", "binary file", ["infer-schema", "binary.csv", *draft]),
        Row("infer-schema", "empty file", ["infer-schema", "empty.csv", *draft]),
        Row("infer-schema", "header only", ["infer-schema", "header.csv", *draft]),
        Row("infer-schema", "no target column", ["infer-schema", "notarget.csv", *draft]),
        Row("infer-schema", "one class", ["infer-schema", "oneclass.csv", *draft]),
        Row("infer-schema", "text feature", ["infer-schema", "text.csv", *draft]),
        Row("infer-schema", "inf value", ["infer-schema", "inf.csv", *draft]),
        Row("infer-schema", "missing folder", ["infer-schema", "sample.csv", *draft[:2], "--out", "no/s.yaml"]),
        Row("infer-schema", "negative margin", ["infer-schema", "sample.csv", *draft, "--margin", "-0.6"]),
        Row("infer-schema", "bad flag value", ["infer-schema", "sample.csv", *draft, "--margin", "wide"]),
    ]


def score_rows() -> list[Row]:
    """score: a missing or unknown file, a file without the contract's columns, no registry, no Java (an unknown
    alias in a real registry: tests/integration/test_batch_scoring.py)."""
    model = ["score", "--model", "models:/breast-cancer-classifier@production"]
    out = ["--output", "scores.csv"]
    return [
        Row("score", "missing file", [*model, "--input", "missing.csv", *out]),
        Row("score", "unknown input format", [*model, "--input", "bad.yaml", *out]),
        Row("score", "unknown output format", [*model, "--input", "sample.csv", "--output", "scores.json"]),
        Row("score", "no contract columns", [*model, "--input", "sample.csv", *out, "--schema", SCHEMA]),
        Row("score", "no registry", [*model, "--input", "sample.csv", *out], "project"),
        Row("score", "bad model uri", ["score", "--model", "production", "--input", "sample.csv", *out], "project"),
        Row("score", "not a workspace", ["score", "--input", "sample.csv", *out]),
        Row("score", "bad engine", [*model, "--input", "sample.csv", *out, "--engine", "gpu"]),
        Row("score", "spark reads parquet", [*model, "--input", "sample.csv", *out, "--engine", "spark"]),
        Row("score", "no java", [*model, "--input", "sample.csv", *out, "--engine", "spark"], env=NO_JAVA),
    ]


def write_inputs(folder: Path) -> None:
    """The bad (and one good) input files every row may name, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.csv").write_text("")
    (folder / "header.csv").write_text("a,target\n")
    (folder / "notarget.csv").write_text("a,b\n1,2\n3,4\n")
    (folder / "oneclass.csv").write_text("a,target\n1,0\n2,0\n3,0\n")
    (folder / "text.csv").write_text("a,target\n1,0\nx,1\n3,1\n")
    (folder / "inf.csv").write_text("a,target\n1,0\ninf,1\n3,1\n")
    (folder / "sample.csv").write_text("a,b,target\n1,,0\n2,3,1\n5,6,1\n")
    (folder / "bad.yaml").write_text("name: x\nfeatures: []\ntarget: {name: y, labels: [0]}\n")


def make_place(root: Path, where: str) -> Path:
    """The folder a row runs in: no workspace, a project (params.yaml), or one with a registration to look up."""
    place = root / where
    write_inputs(place)
    if where in ("project", "registered"):
        shutil.copyfile(REPO / "params.yaml", place / "params.yaml")
    if where == "registered":
        (place / "reports").mkdir()
        (place / "models").mkdir()
        registration = {"model_name": "m", "version": 1, "created": True, "model_uri": "models:/m/1"}
        (place / "reports" / "registration.json").write_text(json.dumps({**registration, "artifact_sha256": "aa"}))
        (place / "models" / "model_card.json").write_text(json.dumps({"sha256": "aa"}))
    return place


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read afresh, the registry and timeouts from the row only, MLflow's request settings restored, the
    actor named."""
    from mlrelease.core.settings import get_settings
    from registry.client import BRIEF_REQUESTS, OUTER_ENV_VAR, TIMEOUT_VAR

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", TIMEOUT_VAR, OUTER_ENV_VAR, *BRIEF_REQUESTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLRELEASE_BY", "sweep")  # who acts, without asking git (a process)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


ROWS = rows()


def test_every_command_has_a_row() -> None:
    """A new command needs its bad inputs here: the sweep enumerates the app, not a list kept by hand."""
    group = typer.main.get_command(app)
    commands = set(group.commands)  # type: ignore[attr-defined]
    assert commands - {row.command for row in ROWS} == set()


@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_a_mistake_is_answered_in_one_line(
    row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    place = make_place(tmp_path, row.where)
    monkeypatch.chdir(place)
    monkeypatch.setenv("MLRELEASE_HOME", str(place))
    for name, value in row.env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, row.args)
    said = [line for line in result.stderr.splitlines() if line.strip()]
    shown = f"exit {result.exit_code}, exception {result.exception!r}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.output, shown
    assert isinstance(result.exception, SystemExit), shown
    assert result.exit_code in (1, 2), shown
    assert len(said) == 1, shown
    assert not [r.getMessage() for r in caplog.records if "Retrying" in r.getMessage()]  # no urllib3 retries
    assert not list(place.glob("drafted.yaml")) and not list(place.glob(".drafted.yaml.*"))  # no partial contract


def test_an_unreachable_registry_is_named_with_what_to_do(
    isolated: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = make_place(tmp_path, "registered")
    monkeypatch.chdir(place)
    monkeypatch.setenv("MLRELEASE_HOME", str(place))
    for name, value in UNREACHABLE.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["summary"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "mlrelease summary: registry http://127.0.0.1:1 refused the connection (nothing listens there): start it, "
        "or set MLFLOW_TRACKING_URI to the registry's address (unset: the workspace's own sqlite registry)"
    )


def test_the_environment_comes_back_after_a_command(isolated: None, tmp_path: Path, monkeypatch) -> None:
    """The CLI bounds MLflow's requests for the command only (servers it starts get the environment from before)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLRELEASE_HOME", str(tmp_path))
    before = dict(os.environ)
    CliRunner().invoke(app, ["status"])
    assert dict(os.environ) == before


def test_a_bug_keeps_its_traceback(isolated: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a user's mistake becomes one line: anything else is a bug, and reaches the user as one."""
    import pipelines.draft

    def broken(*args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(pipelines.draft, "draft_contract", broken)
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["infer-schema", "sample.csv", "--target", "target", "--out", "s.yaml"])
    assert isinstance(result.exception, KeyError)
    assert explain(RuntimeError("a bug")) is None and explain(AssertionError()) is None


def test_a_path_error_names_the_path() -> None:
    message, code = explain(FileNotFoundError(2, "No such file or directory", "reports/x.json")) or ("", 0)
    assert code == 2 and message.startswith("reports/x.json: No such file or directory")
    assert explain(OSError(28, "No space left on device")) is None  # no path to fix: not a user's mistake


# ----- `mlrelease summary` in a fresh clone: committed reports are not this run's --------------------------------
FRESH_CLONE = {
    "evaluate": [{"changed deps": {"data/prepared": "deleted", "models/checkpoint.pt": "deleted"}}],
    "export": [
        {"changed deps": {"reports/evaluate_gates.json": "modified", "params.yaml": {"export": "modified"}}},
        {"changed outs": {"models/model.pt": "not in cache"}},
    ],
}
GATES_REWRITTEN = {"reports/evaluate_gates.json": "modified"}
LOCKED = {
    "evaluate": ["reports/metrics.json", "reports/evaluate_gates.json"],
    "export": ["reports/export.json"],
    "register": ["reports/registration.json"],
}


def test_reports_are_this_runs_stale_or_written_by_a_failed_stage() -> None:
    from pipelines.freshness import classify

    states = classify(FRESH_CLONE, LOCKED)
    assert {path: state.fresh for path, state in states.items()} == {
        "reports/metrics.json": False,
        "reports/evaluate_gates.json": False,
        "reports/export.json": False,
        "reports/registration.json": True,  # register: no change, dvc.lock records this run's
    }
    assert "data/prepared, models/checkpoint.pt missing" in states["reports/metrics.json"].why
    assert "params.yaml (export)" in states["reports/export.json"].why
    failed = {
        "evaluate": [{"changed deps": {"params.yaml": {"gates": "modified"}}}, {"changed outs": GATES_REWRITTEN}],
        "export": [{"changed deps": GATES_REWRITTEN}],
    }
    states = classify(failed, LOCKED)  # written after dvc.lock: the stage ran here and failed
    assert states["reports/evaluate_gates.json"].fresh and states["reports/metrics.json"].fresh  # same bytes
    assert not states["reports/export.json"].fresh


def test_summary_in_a_fresh_clone_says_the_reports_are_committed(tmp_path: Path, monkeypatch) -> None:
    """It showed the committed gate reports as if the last run had written them (and passed every gate)."""
    from mlrelease.commands import pipeline
    from pipelines.freshness import classify

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    gates = {"gates": [{"name": "min_accuracy", "value": 0.97, "threshold": ">= 0.95", "passed": True}]}
    (tmp_path / "reports" / "evaluate_gates.json").write_text(json.dumps(gates))
    monkeypatch.setattr(pipeline, "_report_states", lambda: classify(FRESH_CLONE, LOCKED))
    result = CliRunner().invoke(app, ["summary"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1
    assert "No run in this workspace wrote the gate reports" in said and "`mlrelease run`" in said
    assert "reports/evaluate_gates.json is stale: the committed one" in said
    markdown = CliRunner().invoke(app, ["summary", "--markdown"]).output
    assert "| evaluate | min_accuracy | 0.97 | >= 0.95 | PASS | stale |" in markdown
