"""Engine selection, tags and the wheelhouse pins of the serving image (no image is built here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.engine import Engine, EngineError, detect_engine, make_engine
from deploy.image.build import BuildParams, BuildTarget, image_tag, local_ref, prune_after_build, superseded
from deploy.image.wheelhouse import serving_pins


def test_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(EngineError, match="docker, podman, buildah"):
        make_engine("rkt")


@pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah not installed")
def test_buildah_gets_vfs_and_chroot_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLRELEASE_BUILDAH_STORAGE_DRIVER", raising=False)
    engine = detect_engine("buildah")
    assert engine.cmd("images") == [engine.binary, "--storage-driver", "vfs", "images"]
    assert engine.isolation == "chroot"


def test_tag_is_name_version_gitsha_and_sanitized() -> None:
    assert image_tag("breast-cancer-classifier", "3", "abc123def456") == "breast-cancer-classifier:3-abc123def456"
    assert image_tag("My Model", "local", "x+y") == "my-model:local-x-y"


def test_buildah_refs_are_prefixed_with_localhost() -> None:
    class Fake:
        name = "buildah"

    assert local_ref(Fake(), "m:1-abc") == "localhost/m:1-abc"  # type: ignore[arg-type]
    assert local_ref(Fake(), "registry.example/m:1") == "registry.example/m:1"  # type: ignore[arg-type]


def test_serving_pins_hold_the_serving_closure_and_no_training_stack() -> None:
    pins = serving_pins(tuple(BuildParams().exclude_packages))
    for needed in (
        "torch",
        "uvicorn",
        "httptools",
        "pydantic",
        "pydantic-settings",
        "numpy",
        "orjson",
        "prometheus-client",
        "pip",
    ):
        assert needed in pins, needed
    unwanted_all = ("mlrelease", "mlflow", "dvc", "pandas", "scikit-learn", "pytest", "sympy", "networkx", "starlette")
    for unwanted in (*unwanted_all, "fastapi"):
        assert unwanted not in pins, unwanted
    assert pins["torch"].startswith("2.")


def test_build_params_forbid_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        BuildParams.model_validate({"smoke_row": 3})


def test_a_build_supersedes_its_versions_other_commits_and_the_image_its_tag_named_before() -> None:
    repo, old, new = "localhost/m", "0123456789ab", "ba9876543210"
    images = [
        ("new", [f"{repo}:3-{new}"]),
        ("old", [f"{repo}:3-{old}", f"{repo}:stable"]),  # another name of an earlier commit's image stays
        ("tagged", [f"{repo}:3-approved"]),  # not a commit: someone's tag
        ("v30", [f"{repo}:30-{old}"]),  # version 30 is not version 3
        ("v2", [f"{repo}:2-{old}"]),
        ("was", []),  # what 3-<new> named before this build: dangling now
        ("other", []),
    ]
    ref, prefix = f"{repo}:3-{new}", f"{repo}:3-"
    assert superseded(images, ref, prefix, "sha256:was") == [f"{repo}:3-{old}", "was"]  # docker's ids: sha256:...
    assert superseded(images, ref, prefix, "new") == [f"{repo}:3-{old}"]  # rebuilt, unchanged
    assert superseded(images, ref, prefix, "v2") == [f"{repo}:3-{old}"]  # still has a name
    assert superseded(images, ref, None, "was") == ["was"]  # a local build: other commits' images stay


def test_buildah_and_podman_names_get_localhost_unless_they_start_with_a_registry_host() -> None:
    class Fake:
        name = "podman"

    podman: Any = Fake()
    assert local_ref(podman, "team/m:3-abc") == "localhost/team/m:3-abc"
    assert local_ref(podman, "registry:5000/m:3-abc") == "registry:5000/m:3-abc"
    assert local_ref(podman, "ghcr.io/team/m:3") == "ghcr.io/team/m:3"
    assert local_ref(podman, "localhost/m:3") == "localhost/m:3"


class RecordingEngine(Engine):
    """buildah's command line, answered from a list of images; removals are recorded, not run."""

    def __init__(self, images: list[tuple[str, list[str]]], fail: str = "") -> None:
        super().__init__("buildah", "buildah")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "fail", fail)  # the subcommand that fails, as a timeout does

    def run(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)  # type: ignore[attr-defined]
        if args[0] == self.fail and (args[0] == "images" or len(self.calls) == 2):  # type: ignore[attr-defined]
            raise EngineError(f"`buildah {args[0]} ...` did not finish within {timeout:.0f} s")
        listed = [{"id": f"sha256:{i}", "names": n} for i, n in self.images]  # type: ignore[attr-defined]
        return subprocess.CompletedProcess(args, 0, stdout=json.dumps(listed) if args[0] == "images" else "")


def test_pruning_waits_for_a_passed_smoke_test_keeps_local_builds_apart_and_never_fails_the_build() -> None:
    old, new = "0123456789ab", "ba9876543210"
    images = [("new", [f"localhost/m:3-{new}"]), ("old", [f"localhost/m:3-{old}"]), ("was", [])]
    passed = {"image_ref": f"localhost/m:3-{new}", "replaced_image_id": "was", "smoke": {"passed": True}}
    target = BuildTarget(Path("bundle"), "m", "3", "0" * 64)
    engine = RecordingEngine(images)
    assert prune_after_build(engine, passed, BuildParams(), target) == [f"localhost/m:3-{old}", "was"]
    assert ("rmi", f"localhost/m:3-{old}") in engine.calls  # type: ignore[attr-defined]  # no -f: in use stays
    for report in ({**passed, "smoke": {"passed": False}}, {k: v for k, v in passed.items() if k != "smoke"}):
        untested = RecordingEngine(images)
        assert prune_after_build(untested, report, BuildParams(), target) == []
        assert untested.calls == []  # type: ignore[attr-defined]
    local = BuildTarget(Path("bundle"), "m", "local", "0" * 64)
    local_images = [("new", [f"localhost/m:local-{new}"]), ("other", [f"localhost/m:local-{old}"]), ("was", [])]
    local_report = {**passed, "image_ref": f"localhost/m:local-{new}"}
    assert prune_after_build(RecordingEngine(local_images), local_report, BuildParams(), local) == ["was"]
    assert prune_after_build(RecordingEngine(images, fail="images"), passed, BuildParams(), target) == []
    slow = RecordingEngine(images, fail="rmi")  # the first removal times out, the next one still goes
    assert prune_after_build(slow, passed, BuildParams(), target) == ["was"]
