"""Turn a ModelSource into a verified local bundle folder, a version label and the registry's sha256.

Registry URIs go through registry.register (and so MLflow), imported only here and only when asked: the
serving
image has no MLflow and serves bundle folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deploy.serving.config import ModelSource
from deploy.serving.model import ModelLoadError

LOCAL_VERSION = "local"


@dataclass(frozen=True)
class ResolvedBundle:
    folder: Path
    version: str
    expected_sha256: str | None
    variant_sha256: dict[str, str] | None = field(default=None)  # registry tags of variant artifacts; None: a folder

    def expected(self, variant: str) -> str | None:
        """The registry's sha256 of the variant's artifact (None for a folder, which only its card vouches for); a
        registry version without that artifact is refused here, before anything is loaded."""
        if variant == "fp32" or self.variant_sha256 is None:
            return self.expected_sha256
        sha = self.variant_sha256.get(variant)
        if sha is None:
            raise ModelLoadError(
                f"refusing to serve variant {variant}: version {self.version} has no {variant} artifact in the "
                f"registry (export.{variant} was off or the variant failed its gates); serve fp32 or another version"
            )
        return sha


def resolve(source: ModelSource, workdir: Path) -> ResolvedBundle:
    """A local folder as is; a `models:/` URI downloaded into ``workdir`` and checked against its registry tag."""
    if source.model_dir is not None:
        return ResolvedBundle(Path(source.model_dir), source.version or LOCAL_VERSION, None)
    if source.model_uri is None:
        raise ModelLoadError("no model source given")
    return _from_registry(source.model_uri, source.version, workdir)


def _from_registry(uri: str, version_label: str | None, workdir: Path) -> ResolvedBundle:
    try:
        from mlflow.exceptions import MlflowException

        from registry.register import SHA_TAG, download_bundle, resolve_version, variant_shas
    except ImportError as exc:
        raise ModelLoadError(
            f"{uri}: resolving registry URIs needs mlflow ({exc}); in the serving image pass "
            "--model-dir with the bundle baked into the image"
        ) from exc
    from mlrelease.core.modelcard import IntegrityError

    name = uri[len("models:/") :].split("@", 1)[0].split("/", 1)[0]
    try:
        version = resolve_version(name, uri)
        dest = workdir / f"{version.name}-v{version.version}"
        folder = download_bundle(f"models:/{version.name}/{version.version}", version.name, dest)
    except IntegrityError as exc:
        raise ModelLoadError(f"refusing to serve {uri}: {exc}") from exc
    except MlflowException as exc:
        raise ModelLoadError(f"{uri}: registry lookup failed: {exc.message}") from exc
    label = version_label or str(version.version)
    return ResolvedBundle(folder, label, version.tags.get(SHA_TAG), variant_shas(version.tags))
