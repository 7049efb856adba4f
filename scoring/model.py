"""The registered version a batch is scored with: resolved from ``models:/NAME@ALIAS`` or ``models:/NAME/V``,
its bundle downloaded and checked against the card and the registry's sha256, and loaded the way the model server
loads it (deploy/serving/model.py), so a batch gets the server's own numbers for the same rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.serving.model import LoadedModel, ModelLoadError, load_model
from mlrelease.core.errors import CheckFailed, UserError
from mlrelease.core.modelcard import IntegrityError
from mlrelease.core.settings import Settings

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[\w.-]+)|/(?P<version>\d+))$")


class UnknownModel(UserError):
    """The registry has no such model, version or alias: the message names what it has."""


class UntrustedModel(CheckFailed):
    """The version's bundle does not verify (sha256) or does not load: nothing is scored."""


@dataclass(frozen=True)
class VersionRef:
    """A registered version: name, number, the sha256 its registry entry promises, and its tags."""

    name: str
    version: str
    sha256: str
    tags: dict[str, str]
    asked: str  # what the user wrote, e.g. models:/NAME@production

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/V``; UserError for anything else."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise UserError(f"--model {uri!r}: use models:/NAME@ALIAS (e.g. models:/my-model@production) or models:/NAME/V")
    return match["name"], match["alias"], match["version"]


def resolve_version(uri: str, settings: Settings) -> VersionRef:
    """The version ``uri`` names in the configured registry; UnknownModel naming the aliases and versions it has."""
    from mlflow.exceptions import MlflowException

    from registry.client import get_client, is_not_found
    from registry.register import SHA_TAG

    name, alias, number = parse_model_uri(uri)
    database = settings.tracking_uri.removeprefix("sqlite:///")
    if database != settings.tracking_uri and not Path(database).is_file():  # scoring never creates a registry
        raise UnknownModel(
            f"--model {uri}: no registry at {database}: run the pipeline (`mlrelease run`) first, or set "
            "MLFLOW_TRACKING_URI to the team registry"
        )
    client = get_client(settings)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(number))
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        raise UnknownModel(f"--model {uri}: {_what_is_registered(client, name)}") from exc
    tags = dict(found.tags)
    return VersionRef(name, str(found.version), tags.get(SHA_TAG, ""), tags, uri)


def _what_is_registered(client: Any, name: str) -> str:
    """``NAME has versions 1, 2; aliases candidate -> 2``, or that no model has that name: what to ask for."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return f"no model named {name!r} is registered (run the pipeline, or check MLFLOW_TRACKING_URI)"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    shown = ", ".join(map(str, versions)) or "none"
    return f"not registered; {name} has versions {shown}, aliases {aliases}: name one of those"


def fetch_bundle(ref: VersionRef, workdir: Path, settings: Settings) -> Path:
    """The version's bundle folder (model.pt, card, reference statistics), verified against card and registry."""
    from registry.register import download_bundle

    try:
        return download_bundle(ref.uri, ref.name, workdir / f"{ref.name}-v{ref.version}", settings)
    except IntegrityError as exc:
        raise UntrustedModel(f"refusing to score with {ref.asked}: {exc}") from exc


def load_version(ref: VersionRef, folder: Path) -> LoadedModel:
    """The verified bundle loaded as the server loads it (TorchScript, checked and warmed up)."""
    try:
        return load_model(folder, version=ref.version, expected_sha256=ref.sha256 or None, source=ref.asked)
    except ModelLoadError as exc:
        raise UntrustedModel(f"{ref.asked}: {exc}") from exc
