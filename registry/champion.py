"""Champion/challenger: fetch the version aliased `production` for the evaluate stage to score on the
candidate's test split (scoring is the stage's; this module only reads the registry)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def production_bundle(model_name: str) -> Iterator[tuple[Path | None, str]]:
    """The verified bundle of `models:/NAME@production` in a temporary folder (removed on exit), or None and a
    sentence saying why there is none; a registry error or a tampered artifact raises RuntimeError naming it."""
    from mlflow.exceptions import MlflowException

    from mlrelease.core.modelcard import IntegrityError
    from registry.client import is_not_found
    from registry.register import download_bundle

    with tempfile.TemporaryDirectory() as tmp:
        try:
            bundle = download_bundle(f"models:/{model_name}@production", model_name, Path(tmp))
        except MlflowException as exc:
            if not is_not_found(exc):
                raise RuntimeError(
                    f"cannot read the production version of {model_name!r} from the registry "
                    f"({exc}); check MLFLOW_TRACKING_URI and retry"
                ) from exc
            yield None, f"no production version of {model_name!r} in the registry; nothing to compare"
            return
        except IntegrityError as exc:
            raise RuntimeError(
                f"the production version's artifact fails its sha256 check ({exc}); "
                "investigate before comparing or promoting anything"
            ) from exc
        yield bundle, "production version downloaded"
