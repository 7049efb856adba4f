"""The registry operations a release needs, on one registered model: aliases, tags, versions, verified bundles."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlrelease.core.modelcard import verify_bundle
from mlrelease.core.settings import Settings
from registry.client import get_client, is_not_found

log = logging.getLogger(__name__)


class VersionNotFound(LookupError):
    """The registry has no such version of the model; the message names the versions it does have."""


class Registry:
    """The few MLflow registry operations promotion needs, on one registered model."""

    def __init__(self, model_name: str, settings: Settings) -> None:
        self.model_name = model_name
        self.settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        """One MlflowClient per command (creating one opens and checks the registry database)."""
        if self._client is None:
            self._client = get_client(self.settings)
        return self._client

    def alias(self, alias: str) -> str | None:
        """The version ``alias`` names, or None when it is unset; any other registry error propagates (an
        unreachable registry is not "no version has this alias")."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def delete_alias(self, alias: str, only: str | None = None) -> str | None:
        """Remove the alias if it is set (and, given ``only``, names that version); return the version it named."""
        version = self.alias(alias)
        if version is not None and only in (None, version):
            self.client.delete_registered_model_alias(self.model_name, alias)
        return version

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def require_registered(self, version: str) -> str:
        """``version`` when the registry has it; else a PromotionError naming the versions it does have (checked
        before anything is journaled, so a typo never leaves an operation to recover)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.model_name, version)
            return version
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
        found = self.client.search_model_versions(f"name='{self.model_name}'")
        known = ", ".join(str(v) for v in sorted(int(m.version) for m in found)) or "none"
        raise VersionNotFound(
            f"version {version!r} of {self.model_name} is not registered (registered versions: {known}); "
            "nothing was changed",
        )

    def set_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name, version, key, value)

    def bundle(self, version: str, root: Path) -> Path:
        """The version's verified bundle (cached per version; re-verified against the registry's sha256)."""
        from registry.register import SHA_TAG, download_bundle

        dest = root / f"v{version}"
        expected = self.tags(version).get(SHA_TAG)
        if expected and (dest / "model_card.json").is_file():
            try:
                verify_bundle(dest, expected_sha256=expected)
                return dest
            except Exception:  # stale or tampered cache: fetch again
                log.warning("cached bundle %s does not verify; downloading again", dest)
        return download_bundle(str(version), self.model_name, dest, self.settings)
