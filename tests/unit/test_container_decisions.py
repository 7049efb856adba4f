"""The container runtime's decisions, without an engine: which runtime, which image, which command, which settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.engine import Engine, EngineError
from deploy.targets.base import DeploymentError
from deploy.targets.local import container
from deploy.targets.local.container import (
    CACHE_IN,
    ENV_IN,
    LOCK_IN,
    ImageRun,
    Runtime,
    choose_runtime,
    container_name,
    inner_env,
    replica_argv,
)
from registry.image import pinned_image

BUILDAH = Engine("buildah", "/usr/bin/buildah", ("--storage-driver", "vfs"), "chroot")
DOCKER = Engine("docker", "/usr/bin/docker")
DIGEST = "sha256:" + "ab" * 32
RUN = ImageRun(
    engine="buildah",
    image=f"localhost/clf@{DIGEST}",
    user="10001:10001",
    container="mlrelease-0000-abab",
    env=("PATH=/opt/venv/bin:/usr/bin", "MLRELEASE_HOME=/tmp", "PYTHONPATH=/opt/app/lib"),
)


def no_engine(preferred: str | None = None) -> Engine:
    raise EngineError("no container engine answers: start docker (or podman), or install buildah")


@pytest.mark.parametrize("setting", [None, "auto", "AUTO "])
def test_auto_runs_containers_when_an_engine_answers_else_processes(
    setting: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(container, "detect_engine", lambda preferred=None: BUILDAH)
    assert choose_runtime(setting) == Runtime("container", BUILDAH)
    assert choose_runtime(setting).describe() == "container (buildah)"
    monkeypatch.setattr(container, "detect_engine", no_engine)
    assert choose_runtime(setting) == Runtime("process") and choose_runtime(setting).describe() == "process"


def test_process_never_looks_for_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "detect_engine", lambda preferred=None: pytest.fail("looked for an engine"))
    assert choose_runtime("process") == Runtime("process")


def test_container_without_an_engine_and_a_typo_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "detect_engine", no_engine)
    with pytest.raises(DeploymentError, match=r"MLRELEASE_RUNTIME=container, but no container engine.*=process"):
        choose_runtime("container")
    with pytest.raises(DeploymentError, match=r"'torchscript': use container, process or auto.*MODEL_RUNTIME"):
        choose_runtime("torchscript")


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("localhost/clf:3-0123abcd", f"localhost/clf@{DIGEST}"),
        ("registry.example:5000/team/clf:3-0123abcd", f"registry.example:5000/team/clf@{DIGEST}"),
        ("registry.example:5000/team/clf", f"registry.example:5000/team/clf@{DIGEST}"),
        (f"localhost/clf@{DIGEST}", f"localhost/clf@{DIGEST}"),
    ],
)
def test_the_registry_names_the_image_by_digest(ref: str, pinned: str) -> None:
    assert pinned_image({"image_ref": ref, "image_digest": DIGEST}) == pinned
    assert pinned_image({"image_ref": ref}) is None and pinned_image({}) is None


def test_buildah_runs_each_replica_in_the_versions_shared_container() -> None:
    mounts = {"/s/env.json": f"{ENV_IN}:ro", "/s/lock": LOCK_IN}
    argv = replica_argv(BUILDAH, RUN, mounts, ["--host", "127.0.0.1", "--port", "9001"], 9001, "x")
    head = ["/usr/bin/buildah", "--storage-driver", "vfs", "run", "--isolation", "chroot"]
    assert argv[:6] == head
    assert argv[6:10] == ["--volume", f"/s/env.json:{ENV_IN}:ro", "--volume", f"/s/lock:{LOCK_IN}"]
    assert argv[10:12] == [RUN.container, "--"]
    inside = argv[12:]
    assert inside[:5] == ["/opt/venv/bin/python", "-m", "deploy.targets.launch", ENV_IN, "--"]
    assert inside[5:] == [
        *("/opt/venv/bin/python", "-m", "deploy.serving", "--model-dir", "/opt/model"),
        *("--host", "127.0.0.1", "--port", "9001"),
    ]


def test_docker_runs_each_replica_as_a_hardened_host_network_container_of_the_digest() -> None:
    run = RUN.model_copy(update={"engine": "docker", "container": ""})
    argv = replica_argv(DOCKER, run, {"/s/env.json": f"{ENV_IN}:ro"}, ["--port", "9001"], 9001, "mlrelease-k-prod")
    assert argv[:6] == ["/usr/bin/docker", "run", "--rm", "--name", "mlrelease-k-prod-r9001", "--network"]
    for flag in ("--read-only", "--cap-drop", "no-new-privileges"):
        assert flag in argv
    at = argv.index(run.image)
    assert argv[at - 2 : at] == ["--entrypoint", "/opt/venv/bin/python"]
    assert argv[at + 1 : at + 5] == ["-m", "deploy.targets.launch", ENV_IN, "--"]


def test_inside_the_image_only_serving_settings_pass_and_host_paths_stay_out() -> None:
    host = {
        "MLRELEASE_API_KEY": "k3y-from-the-vault",
        "MLRELEASE_HOME": "/work/project",
        "MLRELEASE_PROGRAM_CACHE": "/work/project/.mlrelease/programs",
        "MLRELEASE_TLS_CERT": "/etc/cert.pem",
        "MLRELEASE_RUNTIME": "container",
        "PATH": "/work/project/.venv/bin:/usr/bin",
        "AWS_SECRET_ACCESS_KEY": "not-for-the-server",
    }
    env = inner_env(RUN, host, with_cache=True)
    assert env["MLRELEASE_API_KEY"] == "k3y-from-the-vault"
    assert env["MLRELEASE_HOME"] == "/tmp" and env["PATH"] == "/opt/venv/bin:/usr/bin"  # the image's own
    assert env["MLRELEASE_PROGRAM_CACHE"] == CACHE_IN and env["MLRELEASE_STARTUP_LOCK"] == LOCK_IN
    assert "MLRELEASE_TLS_CERT" not in env and "MLRELEASE_RUNTIME" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "MLRELEASE_PROGRAM_CACHE" not in inner_env(RUN, host, with_cache=False)


def test_each_state_folder_has_its_own_container_per_digest(tmp_path: Path) -> None:
    one, other = container_name(tmp_path / "a", DIGEST), container_name(tmp_path / "b", DIGEST)
    assert one != other and one.endswith("-abababababab") and one.startswith("mlrelease-")
    assert container_name(tmp_path / "a", DIGEST) == one


def test_a_container_target_refuses_a_version_without_an_image_before_starting_anything(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.targets.local import target as local

    monkeypatch.setattr(local, "choose_runtime", lambda setting: Runtime("container", BUILDAH))
    found = local.LocalTarget(tmp_path / "state")
    assert found.runs_image and "container (buildah) runtime" in found.describe()
    with pytest.raises(DeploymentError, match=r"version 4 has no serving image.*mlrelease build --version 4"):
        found.deploy("staging", "stable", bundle, "4")
    assert found.status() == []


def test_the_process_runtime_does_not_run_images(tmp_path: Path) -> None:
    from deploy.targets.local.target import LocalTarget

    assert LocalTarget(tmp_path, runtime="process").runs_image is False
