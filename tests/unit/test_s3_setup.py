"""The S3 setup as declared: which outputs a fresh clone gets from a DVC remote, the workflows' push and pull steps,
and the dependencies every setup installs at the lock's versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.s3_helpers import uncarried_outputs

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"

PIPELINE = {
    "stages": {
        "prepare": {"outs": ["data/prepared"], "metrics": [{"reports/validation.json": {"cache": False}}]},
        "train": {"outs": ["models/checkpoint.pt", {"models/run.json": {"cache": False}}]},
        "evaluate": {"plots": [{"reports/plots/roc.json": {"cache": False, "x": "fpr"}}], "outs": ["reports/gates"]},
        "register": {"outs": [{"reports/registration.json": {"cache": False}}]},
    }
}


def test_uncached_outputs_git_does_not_carry_are_the_ones_a_clone_lacks() -> None:
    tracked = {"reports/validation.json", "reports/plots/roc.json", "dvc.yaml"}
    assert uncarried_outputs(PIPELINE, tracked) == {
        "train": ["models/run.json"],
        "register": ["reports/registration.json"],
    }
    assert uncarried_outputs(PIPELINE, tracked | {"models/run.json", "reports/registration.json"}) == {}


def test_a_folder_output_is_carried_by_the_files_git_tracks_under_it() -> None:
    pipeline = {"stages": {"plots": {"plots": [{"reports/plots": {"cache": False}}]}}}
    assert uncarried_outputs(pipeline, {"reports/plots/roc.json"}) == {}
    assert uncarried_outputs(pipeline, {"reports/plotsx.json"}) == {"plots": ["reports/plots"]}


def _steps(workflow: str, job: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"][job]["steps"])


def _index(steps: list[dict[str, Any]], text: str) -> int:
    return next(i for i, step in enumerate(steps) if text in step.get("run", "") or text in step.get("name", ""))


def test_release_pushes_data_and_run_cache_after_a_successful_run_or_says_there_is_no_remote() -> None:
    steps = _steps("release.yml", "pipeline")
    push = _index(steps, "dvc push --run-cache")
    assert push > _index(steps, "mlrelease run") and "if" not in steps[push]  # only after the run succeeded
    script = steps[push]["run"]
    assert "::notice::" in script and "DVC_REMOTE_URL" in script and "::error::" in script


def test_pull_requests_pull_data_and_run_cache_before_the_pipeline_and_never_need_secrets() -> None:
    steps = _steps("pr.yml", "pipeline")
    pull = _index(steps, "dvc pull --run-cache")
    assert _index(steps, "python -m venv") < pull < _index(steps, "mlrelease run")
    assert "::warning::" in steps[pull]["run"] and "secrets." not in yaml.safe_dump(steps[pull])


def test_every_setup_installs_the_s3_packages_at_the_locks_versions() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("dvc-s3") for dep in extras["release"])  # make setup and pr.yml install release
    assert any(dep.startswith("boto3") for dep in extras["release"])
    assert any(dep.startswith("moto[server]") for dep in extras["dev"])
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[[^]]*release[^]]*dev[^]]*\]'", makefile)
    lock = (REPO / "requirements" / "constraints.txt").read_text()
    for name in ("dvc-s3", "s3fs", "aiobotocore", "botocore", "boto3", "s3transfer", "moto"):
        assert re.search(rf"^{name}==\S+$", lock, re.MULTILINE), f"{name} is not pinned in the lock"


def test_a_fresh_run_restores_only_the_stages_before_the_registry_from_the_run_cache() -> None:
    from mlrelease.commands.pipeline import registry_free_stages, repro_commands

    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    free = registry_free_stages(pipeline)
    assert free == ["prepare", "validate"]  # train logs to the registry: its run id names a run of that registry
    assert repro_commands("dvc", force=False, fresh=True, free=free) == [
        ["dvc", "repro", "prepare", "validate"],
        ["dvc", "repro", "--no-run-cache"],
    ]
    assert repro_commands("dvc", force=False, fresh=False, free=free) == [["dvc", "repro"]]
    assert repro_commands("dvc", force=True, fresh=True, free=free) == [["dvc", "repro", "--force"]]
    assert repro_commands("dvc", force=False, fresh=True, free=[]) == [["dvc", "repro", "--no-run-cache"]]
