"""The registry operations a release needs, against the real MLflow registry the pipeline wrote (sqlite). The release
commands' handling of what they answer runs against an in-memory registry in tests/unit; what MLflow itself answers
is checked here."""

from __future__ import annotations

import pytest

from mlrelease.core.modelcard import ModelCard
from registry.versions import Registry, VersionNotFound
from tests.workspace import Workspace

pytestmark = pytest.mark.integration


def test_a_version_that_is_not_registered_is_named_with_the_versions_that_are(registry_workspace: Workspace) -> None:
    """A typo in `--to` or `--version` (a number MLflow does not have, or no number at all) is told apart from an
    unreachable registry: the command names the registered versions and exits 2 before anything is journaled."""
    name = ModelCard.read(registry_workspace.root / "models").name
    registry = Registry(name, registry_workspace.settings())
    candidate = registry.alias("candidate")
    assert candidate is not None, "the pipeline registers a candidate"
    assert registry.require_registered(candidate) == candidate
    for typo in ("99", "abc"):
        with pytest.raises(VersionNotFound) as refused:
            registry.require_registered(typo)
        said = str(refused.value)
        assert f"version {typo!r} of {name} is not registered (registered versions: {candidate})" in said, said
        assert said.endswith("nothing was changed"), said
