"""The real serving image: built with buildah from the pipeline's bundle, smoke-tested, scanned, recorded.

One build per test run (the session fixture ``built`` in conftest.py, one xdist group); later builds of the same
inputs reuse its cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from deploy.engine import Engine, inspect_image, local_images
from deploy.image.build import (
    BuildParams,
    BuildTarget,
    build,
    prune_superseded,
    record_on_registry,
    resolve_target,
)
from deploy.image.gate import image_checks, verdict
from deploy.image.scan import ScanParams
from deploy.image.smoke import SmokeError, reference_inputs, smoke_test
from deploy.image.stage import record_verdict
from mlrelease.core.modelcard import ModelCard, sha256_file

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.image,
    pytest.mark.slow,
    pytest.mark.xdist_group("image"),
    pytest.mark.usefixtures("leaves_no_images"),
]


def _containers(engine: Engine) -> list[str]:
    return engine.run("containers", "-q").stdout.split()


def test_build_passes_its_smoke_test_and_reports_digest_and_size(built: dict[str, object]) -> None:
    smoke = built["smoke"]
    assert isinstance(smoke, dict) and smoke["passed"] and smoke["healthcheck_ok"]
    assert smoke["max_abs_diff"] <= BuildParams().smoke_atol and smoke["rows"] == BuildParams().smoke_rows
    assert str(built["image_digest"]).startswith("sha256:")
    assert 100e6 < int(str(built["image_size_bytes"])) < BuildParams().max_image_mb * 1e6
    assert str(built["image_ref"]).startswith("localhost/breast-cancer-classifier:local-")


def test_image_is_non_root_with_healthcheck_labels_and_model(
    engine: Engine, built: dict[str, object], model_bundle: Path
) -> None:
    config = inspect_image(engine, str(built["image_ref"]))["config"]
    assert isinstance(config, dict)
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    labels = config["Labels"]
    card = ModelCard.read(model_bundle)
    assert labels["io.mlrelease.model.name"] == card.name
    assert labels["io.mlrelease.model.sha256"] == card.sha256
    assert labels["org.opencontainers.image.version"] == "local"
    assert labels["org.opencontainers.image.revision"] == built["git_commit"]
    assert labels["io.mlrelease.model.path"] == "/opt/model"


def test_rebuild_with_nothing_changed_reuses_the_cache(
    engine: Engine, built: dict[str, object], model_bundle: Path, image_context: Path, project: Path
) -> None:
    card = ModelCard.read(model_bundle)
    again = build(
        BuildTarget(model_bundle, card.name, "local", card.sha256),
        BuildParams(),
        project,
        engine=engine,
        context=image_context,
        smoke=False,
    )
    assert again["image_id"] == built["image_id"]
    assert again["image_digest"] == built["image_digest"]
    assert again["replaced_image_id"] == built["image_id"]  # its tag named the image it built again


def test_a_build_removes_its_versions_images_of_earlier_commits_and_keeps_other_versions(
    engine: Engine, built: dict[str, object]
) -> None:
    ref = str(built["image_ref"])
    repository = ref.rsplit(":", 1)[0]
    earlier, other_version = f"{repository}:local-000000000000", f"{repository}:7-000000000000"
    for name in (earlier, other_version):
        engine.run("tag", ref, name)
    try:
        assert built["image_id"] in dict(local_images(engine))  # ids as inspect reports them
        assert prune_superseded(engine, ref, f"{repository}:local-", None) == [earlier]
        names = {name for _, names in local_images(engine) for name in names}
        assert ref in names and other_version in names and earlier not in names
    finally:
        engine.run("rmi", other_version, check=False)


def test_smoke_test_fails_on_a_different_model_and_leaves_nothing_running(
    engine: Engine, built: dict[str, object], model_bundle: Path, tmp_path: Path
) -> None:
    """The container serves the built model; a host model that answers differently must fail the smoke test."""
    other = tmp_path / "other"
    shutil.copytree(model_bundle, other)
    module = torch.jit.load(str(model_bundle / "model.pt"))
    flipped = torch.jit.script(_Flip(module))
    flipped.save(str(other / "model.pt"))
    card = ModelCard.read(other)
    card.sha256 = sha256_file(other / "model.pt")
    card.write(other)
    before = set(_containers(engine))
    with pytest.raises(SmokeError, match="differ from the registered model"):
        smoke_test(engine, str(built["image_ref"]), other, reference_inputs(other, 4), atol=1e-6, ready_timeout=180)
    assert set(_containers(engine)) == before
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "--model-dir /opt/model" not in ps


class _Flip(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(self.inner(x), dims=[1])


def test_the_built_image_passes_the_image_gates(engine: Engine, built: dict[str, object], tmp_path: Path) -> None:
    params = ScanParams()
    checks = image_checks(engine, str(built["image_ref"]), params, tmp_path / "sbom.json")
    by_tool = {c.tool: c for c in checks}
    policy = by_tool["image-policy"]
    assert policy.status == "pass", [f"{f.where()} {f.message}" for f in policy.findings]
    sbom = json.loads((tmp_path / "sbom.json").read_text())
    purls = {c.get("purl", "") for c in sbom["components"]}
    assert any(p.startswith("pkg:pypi/torch@") for p in purls)
    assert any(p.startswith("pkg:deb/debian/libc6@") for p in purls)
    assert not any("mlflow" in p for p in purls)
    audit = by_tool["pip-audit"]
    if audit.status == "not_checked":  # no advisory service from here: never reported as clean
        assert audit.detail.startswith("not checked")
        assert verdict(checks, params)[0] is True
        assert verdict(checks, ScanParams(unchecked_vulnerabilities="fail"))[0] is False


def test_planted_root_user_and_secret_file_fail_the_image_gate(engine: Engine, tmp_path: Path) -> None:
    """A small image that runs as root, has no HEALTHCHECK and carries a credentials file under /opt/app in its
    second layer fails the same gate the built image passes. Two layers from scratch: the gate reads any image, and
    saving and reading a whole base image (tens of seconds) would add nothing to what this checks."""
    notes = tmp_path / "README"
    notes.write_text("an application folder\n")
    secret = tmp_path / "app.env"
    secret.write_text("DB_HOST=db\nDB_PASSWORD='s3cr3t-Pa55w0rd-for-prod-9f8e7d'\n")
    base, ref = "localhost/mlrelease-planted-base:test", "localhost/mlrelease-planted:test"
    try:
        for source, planted, dest in ((("scratch",), notes, base), (("--pull=false", base), secret, ref)):
            container = engine.run("from", *source).stdout.strip()
            try:
                engine.run("copy", container, str(planted), f"/opt/app/{planted.name}")
                engine.run("config", "--user", "root", container)
                engine.run("commit", "--format", "docker", container, dest)
            finally:
                engine.run("rm", container, check=False)
        checks = image_checks(engine, ref, ScanParams(), tmp_path / "sbom.json")
    finally:
        engine.run("rmi", ref, base, check=False)
    policy = next(c for c in checks if c.tool == "image-policy")
    assert policy.status == "fail"
    rules = {f.rule for f in policy.findings}
    assert {"non-root-user", "healthcheck"} <= rules
    hits = [f for f in policy.findings if f.tool == "detect-secrets"]
    assert [(f.file, f.line) for f in hits] == [("/opt/app/app.env", 2)]
    assert hits[0].layer.startswith("layer 1")


def test_registry_version_resolves_and_records_image_tags(
    engine: Engine, built: dict[str, object], registry_workspace: object, tmp_path: Path
) -> None:
    """`candidate` resolves to a registry version whose bundle is the built one; the version gets the image tags,
    then the scan's verdict on the digest read from the engine (what `mlrelease scan` records)."""
    settings = registry_workspace.settings()  # type: ignore[attr-defined]
    name = ModelCard.read(registry_workspace.root / "models").name  # type: ignore[attr-defined]
    target = resolve_target(None, "candidate", name, tmp_path / "bundle", settings)
    assert target.model_version.isdigit()
    assert target.artifact_sha256 == built["artifact_sha256"]
    record_on_registry(target, built, settings)
    from registry.client import get_client

    tags = get_client(settings).get_model_version(name, target.model_version).tags
    assert tags["image_ref"] == built["image_ref"]
    assert tags["image_digest"] == built["image_digest"]
    assert int(tags["image_size_bytes"]) == built["image_size_bytes"]
    ref = str(built["image_ref"])
    report: dict[str, object] = {"passed": True}  # the scan's verdict: what is checked here is how it is recorded
    from_registry = {**built, "model_name": name, "model_version": target.model_version}
    record_verdict(engine, ref, inspect_image(engine, ref), from_registry, report, settings)
    tags = get_client(settings).get_model_version(name, target.model_version).tags
    assert (tags["image_scan"], tags["image_scan_digest"], report["recorded"]) == (
        "passed",
        built["image_digest"],
        f"{name} v{target.model_version}",
    )
