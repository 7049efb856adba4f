"""A pull request's model against its base branch (`mlrelease compare`) and the job summary of a failed run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlrelease.cli import app
from pipelines.compare import (
    compare_metrics,
    compare_with,
    interface_changes,
    loosened_contract,
    loosened_gates,
    markdown,
    threshold_fields,
)

pytestmark = pytest.mark.integration  # starts processes (external tools, git, subprocesses)

BASE_METRICS = {"accuracy": 0.97, "roc_auc": 0.99, "f1": 0.98, "precision": 0.98, "recall": 0.97}
PARAMS = {"gates": {"min_accuracy": 0.95, "min_roc_auc": 0.98, "champion_tolerance": 0.01}, "export": {}}


def test_gated_metrics_may_trail_the_base_by_the_tolerance_only() -> None:
    rows = {r.name: r for r in compare_metrics(BASE_METRICS, {**BASE_METRICS, "accuracy": 0.9601}, 0.01)}
    assert rows["accuracy"].passed is True and rows["roc_auc"].passed is True
    assert rows["f1"].passed is None  # shown, not gated
    rows = {r.name: r for r in compare_metrics(BASE_METRICS, {**BASE_METRICS, "accuracy": 0.9599}, 0.01)}
    assert rows["accuracy"].passed is False and rows["accuracy"].delta == pytest.approx(-0.0101)
    missing = {r.name: r for r in compare_metrics(BASE_METRICS, {"accuracy": 0.99}, 0.01)}
    assert missing["roc_auc"].passed is False  # a gated metric the PR no longer reports fails


def test_loosened_gates_are_named_tightened_ones_are_not() -> None:
    head = {
        "gates": {"min_accuracy": 0.85, "min_roc_auc": 0.99, "champion_tolerance": 0.05},
        "export": {"max_p95_ms_batch1": 100},
    }
    base = {**PARAMS, "export": {"max_p95_ms_batch1": 150}}
    assert loosened_gates(base, head) == ["gates.min_accuracy: 0.95 -> 0.85", "gates.champion_tolerance: 0.01 -> 0.05"]
    assert loosened_gates(base, base) == []
    slo = {"loadtest": {"slo": {"p99_ms": 100, "min_rps": 200}}}
    assert loosened_gates(slo, {"loadtest": {"slo": {"p99_ms": 250, "min_rps": 200}}}) == [
        "loadtest.slo.p99_ms: 100 -> 250"
    ]
    canary = {"canary": {"max_divergence": 0.03, "divergence_p_value": 0.001}}
    assert loosened_gates(canary, {"canary": {"divergence_p_value": 0.0001}}) == [
        "canary.max_divergence: 0.03 -> removed (the code's default 0.05 applies)",  # deleted: the default is laxer
        "canary.divergence_p_value: 0.001 -> 0.0001",
    ]
    assert loosened_gates(PARAMS, {"gates": {"min_accuracy": 0.95, "min_roc_auc": 0.98}}) == []  # default 0.01 = base


def test_thresholds_are_read_from_the_fields_that_define_them() -> None:
    fields = threshold_fields()
    assert fields["gates.min_accuracy"] == ("down", None)  # required in params.yaml: no default
    assert fields["canary.divergence_p_value"] == ("down", 0.001)
    assert fields["loadtest.slo.max_error_rate"] == ("up", 0.001)
    assert fields["build.smoke_atol"] == ("up", 1e-6)
    assert "canary.load_rps" not in fields and "export.latency_runs" not in fields  # settings, not thresholds


def test_a_data_contract_that_lets_more_through_is_named() -> None:
    base = {
        "features": [{"name": "a", "min": 0, "max": 10}, {"name": "b", "dtype": "int", "min": 1}, {"name": "c"}],
        "min_rows": 10,
        "max_duplicate_fraction": 0.05,
    }
    head = {
        "features": [{"name": "a", "min": -5, "max": 8, "nullable": True}, {"name": "b", "dtype": "float"}],
        "min_rows": 5,
        "max_duplicate_fraction": 0.05,
    }
    assert loosened_contract(base, head, "s.yaml") == [
        "s.yaml feature 'a' min: 0 -> -5",
        "s.yaml feature 'a': nulls now allowed",
        "s.yaml feature 'b' min: 1 -> none",
        "s.yaml feature 'b': dtype int -> float",
        "s.yaml min_rows: 10 -> 5",
    ]  # a's max narrowed and c dropped: not laxer
    assert loosened_contract(base, base, "s.yaml") == []


def test_a_changed_model_interface_is_named_and_an_unchanged_one_is_not() -> None:
    target = {"name": "y", "labels": [0, 1]}
    base = {"features": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "target": target}
    head = {"features": [{"name": "b"}, {"name": "a"}, {"name": "d"}], "target": {"name": "y", "labels": [1, 0]}}
    assert interface_changes(base, head, "s.yaml") == [
        "s.yaml: feature 'c' dropped",
        "s.yaml: feature 'd' added",
        "s.yaml: features reordered (rows sent by position now mean other features)",
        "s.yaml: target labels [0, 1] -> [1, 0] (class indices move)",
    ]
    assert interface_changes(base, {**base, "features": [*base["features"], {"name": "d"}]}, "s.yaml") == [
        "s.yaml: feature 'd' added"  # appended: the old positions keep their meaning
    ]
    assert interface_changes(base, {**base, "min_rows": 3}, "s.yaml") == []


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository whose `base` branch committed metrics and params, checked out on `feature`."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e.invalid"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(BASE_METRICS))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for args in (
        ["init", "-q", "-b", "base"],
        ["add", "-A"],
        ["commit", "-q", "-m", "base"],
        ["checkout", "-qb", "feature"],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True)
    return tmp_path


def test_compare_reads_both_contracts_through_their_params(repo: Path) -> None:
    (repo / "s.yaml").write_text(yaml.safe_dump({"features": [{"name": "a", "max": 1.0}]}))
    head_params = {**PARAMS, "data": {"schema": "s.yaml"}}
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e.invalid"}
    (repo / "params.yaml").write_text(yaml.safe_dump(head_params))
    for args in (["add", "-A"], ["commit", "-q", "-m", "contract"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    (repo / "s.yaml").write_text(yaml.safe_dump({"features": [{"name": "a", "max": 2.0}]}))
    result = compare_with("HEAD", BASE_METRICS, head_params)
    assert result is not None and result.loosened == ["s.yaml feature 'a' max: 1 -> 2"] and not result.passed
    assert result.interface == []
    (repo / "s.yaml").write_text(yaml.safe_dump({"features": [{"name": "a", "max": 1.0}, {"name": "b"}]}))
    result = compare_with("HEAD", BASE_METRICS, head_params)
    assert result is not None and result.passed and result.interface == ["s.yaml: feature 'b' added"]
    shown = markdown(result, "HEAD")
    assert "**Model interface changed by this PR**" in shown and "- `s.yaml: feature 'b' added`" in shown


def test_the_pr_cannot_widen_its_own_tolerance(repo: Path) -> None:
    head_params = {"gates": {**PARAMS["gates"], "champion_tolerance": 0.5}}
    result = compare_with("base", {**BASE_METRICS, "accuracy": 0.90}, head_params)
    assert result is not None and result.tolerance == 0.01  # the base branch's
    assert [r.name for r in result.regressions] == ["accuracy"]
    assert result.loosened == ["gates.champion_tolerance: 0.01 -> 0.5"] and not result.passed


def test_compare_command_fails_a_regression_and_accept_lets_it_through(repo: Path) -> None:
    (repo / "reports" / "metrics.json").write_text(json.dumps({**BASE_METRICS, "roc_auc": 0.95}))
    runner = CliRunner()
    failed = runner.invoke(app, ["compare", "--base", "base", "--markdown"])
    assert failed.exit_code == 1, failed.output
    assert (
        "## Model vs base: **FAILED**" in failed.output
        and "| roc_auc | 0.9900 | 0.9500 | -0.0400 | FAIL" in failed.output
    )
    assert "accept-regression" in " ".join(failed.output.split())
    accepted = runner.invoke(app, ["compare", "--base", "base", "--accept", "--markdown"])
    assert accepted.exit_code == 0 and "accepted (--accept): roc_auc 0.95 vs base 0.99" in accepted.output
    assert "## Model vs base: **FAILED, accepted** by a reviewer" in accepted.output  # the job summary says so too
    terminal = runner.invoke(app, ["compare", "--base", "base", "--accept"]).output  # a table, not markdown
    assert "Model vs base: FAILED, accepted (--accept)" in terminal and "##" not in terminal, terminal
    assert "roc_auc" in terminal and "FAIL (> 0.01 below)" in terminal and "|---" not in terminal, terminal
    (repo / "reports" / "metrics.json").write_text(json.dumps(BASE_METRICS))
    assert runner.invoke(app, ["compare", "--base", "base"]).exit_code == 0


def test_compare_without_base_metrics_or_a_known_ref(repo: Path) -> None:
    runner = CliRunner()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e.invalid"}
    subprocess.run(["git", "rm", "-q", "--cached", "reports/metrics.json"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "no metrics"], cwd=repo, env=env, check=True)
    first = runner.invoke(app, ["compare", "--base", "feature"])  # a base that never committed metrics
    assert first.exit_code == 0 and "nothing to compare with" in first.output
    unknown = runner.invoke(app, ["compare", "--base", "no-such-branch"])
    assert unknown.exit_code == 2 and "fetch the base branch" in " ".join(unknown.output.split())


def test_summary_of_a_run_that_failed_a_gate_names_the_gate(repo: Path) -> None:
    gates = {"gates": [{"name": "min_accuracy", "value": 0.877, "threshold": ">= 0.95", "passed": False, "detail": ""}]}
    (repo / "reports" / "evaluate_gates.json").write_text(json.dumps(gates))
    result = CliRunner().invoke(app, ["summary", "--markdown"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "**No model was registered.** Failed gates: `min_accuracy` (0.877 vs >= 0.95)" in text
    assert "| evaluate | min_accuracy | 0.877 | >= 0.95 | FAIL |" in text


def test_a_registration_of_another_model_or_with_failed_gates_is_not_this_runs(repo: Path) -> None:
    """A run that stopped before register leaves the previous registration.json in place (DVC does not delete it)."""
    registration = {"model_name": "m", "version": 3, "created": True, "model_uri": "models:/m/3"}
    (repo / "reports" / "registration.json").write_text(json.dumps({**registration, "artifact_sha256": "aa"}))
    (repo / "models").mkdir()
    (repo / "models" / "model_card.json").write_text(json.dumps({"sha256": "bb"}))
    result = CliRunner().invoke(app, ["summary", "--markdown"])
    assert result.exit_code == 1 and "No model was registered" in result.output
    assert "The pipeline stopped before its gates ran" in " ".join(result.output.split())
    (repo / "models" / "model_card.json").write_text(json.dumps({"sha256": "aa"}))  # the same model ...
    gates = {"gates": [{"name": "min_roc_auc", "value": 0.9, "threshold": ">= 0.98", "passed": False, "detail": ""}]}
    (repo / "reports" / "evaluate_gates.json").write_text(json.dumps(gates))  # ... but this run failed a gate
    result = CliRunner().invoke(app, ["summary", "--markdown"])
    assert result.exit_code == 1 and "Failed gates: `min_roc_auc`" in " ".join(result.output.split())
    (repo / "reports" / "evaluate_gates.json").write_text(json.dumps({"gates": []}))
    passed = CliRunner().invoke(app, ["summary"])  # same model, nothing failed: the registry is asked about it
    assert "No model was registered" not in passed.output
    assert "cannot read it" in " ".join(
        passed.output.split()
    )  # this folder's registry never had it: said, no traceback


def test_run_fresh_removes_what_dvc_yaml_declares_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlrelease.commands.pipeline import remove_outputs

    monkeypatch.chdir(tmp_path)
    stages = {
        "a": {"cmd": "x", "outs": ["data/prepared", {"models/train_run.json": {"cache": False}}]},
        "b": {"cmd": "y", "metrics": [{"reports/metrics.json": {"cache": False}}], "plots": ["reports/plots/roc.json"]},
    }
    Path("dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for name in ("data/prepared/train.csv", "models/train_run.json", "models/keep.txt", "reports/metrics.json"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("x")
    Path("dvc.lock").write_text("x")
    assert remove_outputs() == ["data/prepared", "models/train_run.json", "reports/metrics.json"]
    assert sorted(str(p) for p in Path().rglob("*") if p.is_file()) == ["dvc.lock", "dvc.yaml", "models/keep.txt"]
