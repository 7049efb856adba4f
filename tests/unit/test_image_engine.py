"""Engine selection, tags and the wheelhouse pins of the serving image (no image is built here)."""

from __future__ import annotations

import shutil

import pytest

from deploy.image.build import BuildParams, image_tag, local_ref, superseded
from deploy.image.engine import EngineError, detect_engine, make_engine
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
        "starlette",
        "pydantic",
        "pydantic-settings",
        "numpy",
        "orjson",
        "prometheus-client",
        "pip",
    ):
        assert needed in pins, needed
    for unwanted in ("mlrelease", "mlflow", "dvc", "pandas", "scikit-learn", "pytest", "sympy", "networkx"):
        assert unwanted not in pins, unwanted
    assert pins["torch"].startswith("2.")


def test_build_params_forbid_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        BuildParams.model_validate({"smoke_row": 3})


def test_a_build_supersedes_its_versions_other_commits_and_the_image_its_tag_named_before() -> None:
    repo = "localhost/m"
    images = [
        ("new", [f"{repo}:3-bbb"]),
        ("old", [f"{repo}:3-aaa", f"{repo}:stable"]),  # another name of an earlier commit's image stays
        ("v30", [f"{repo}:30-aaa"]),  # version 30 is not version 3
        ("v2", [f"{repo}:2-aaa"]),
        ("was", []),  # what 3-bbb named before this build: dangling now
        ("other", []),
    ]
    assert superseded(images, f"{repo}:3-bbb", f"{repo}:3-", "was") == [f"{repo}:3-aaa", "was"]
    assert superseded(images, f"{repo}:3-bbb", f"{repo}:3-", "new") == [f"{repo}:3-aaa"]  # rebuilt, unchanged
    assert superseded(images, f"{repo}:3-bbb", f"{repo}:3-", "v2") == [f"{repo}:3-aaa"]  # still has a name
    assert superseded(images, f"{repo}:3-bbb", f"{repo}:3-", None) == [f"{repo}:3-aaa"]
