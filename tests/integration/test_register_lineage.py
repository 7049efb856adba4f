"""Lineage of a registered version: the git commit tag is `-dirty` only when sources differ from HEAD."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.register import git_commit, pipeline_outputs, uncommitted_sources

pytestmark = pytest.mark.integration  # starts processes (external tools, git, subprocesses)

DVC_YAML = """
stages:
  train:
    cmd: python train.py
    outs:
      - models
    metrics:
      - reports/metrics.json:
          cache: false
  deploy:
    wdir: deploy
    cmd: python build.py
    plots:
      - ../reports/plots/roc.json
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed project with code, params, dvc.yaml, dvc.lock and committed reports."""
    for rel, text in {
        "dvc.yaml": DVC_YAML,
        "dvc.lock": "schema: '2.0'\n",
        "params.yaml": "seed: 1\n",
        "train.py": "print('train')\n",
        "reports/metrics.json": "{}\n",
        "reports/plots/roc.json": "[]\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init")
    return tmp_path


def test_outputs_are_read_from_dvc_yaml_relative_to_each_stage(repo: Path) -> None:
    assert pipeline_outputs(repo / "dvc.yaml") == {
        "dvc.lock",
        "models",
        "reports/metrics.json",
        "reports/plots/roc.json",
    }
    assert pipeline_outputs(repo / "missing.yaml") == {"dvc.lock"}


def test_the_pipelines_own_outputs_do_not_make_the_commit_dirty(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "reports/metrics.json").write_text('{"accuracy": 0.97}\n')
    (repo / "reports/plots/roc.json").write_text("[1]\n")
    assert uncommitted_sources(repo) == []
    assert git_commit(repo) == head


def test_changed_code_or_params_make_it_dirty_and_are_named(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "train.py").write_text("print('changed')\n")
    (repo / "params.yaml").write_text("seed: 2\n")
    (repo / "untracked.py").write_text("ignored\n")  # untracked files are not part of the commit's story
    with caplog.at_level("WARNING"):
        assert git_commit(repo) == f"{head}-dirty"
    assert uncommitted_sources(repo / "reports") == ["params.yaml", "train.py"]  # from a subfolder too
    assert "params.yaml, train.py" in caplog.text


def test_outside_git_it_says_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
