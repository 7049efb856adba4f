"""``mlrelease infer-schema``: draft a data contract from a trusted sample, and never write one the sample fails.

The draft is checked against the sample it came from before it is written (a contract its own input fails would
stop the next pipeline run); it is written atomically, so a refused or interrupted draft leaves no partial file.
"""

from __future__ import annotations

from pathlib import Path

from mlrelease.core.errors import CheckFailed, UserError
from mlrelease.core.files import atomic_write
from pipelines.data import load_source
from pipelines.schema import DataContract, dump_contract, infer_contract
from pipelines.validate import ValidationResult, validate_frame


class DraftPathError(UserError):
    """The contract cannot be written where asked (no such folder, or a folder in the way)."""


class DraftRejectsSample(CheckFailed):
    """The drafted contract fails its own sample (e.g. an infinite value): nothing was written."""


def check_destination(out: Path) -> None:
    """``out`` must be a file path in an existing folder: said before the sample is read, not after."""
    if out.is_dir():
        raise DraftPathError(f"{out} is a folder: pass the contract's file name, e.g. {out / 'my.yaml'}")
    if not out.parent.is_dir():
        raise DraftPathError(
            f"{out}: the folder {out.parent} does not exist; create it, or write the contract elsewhere"
        )


def rejection(result: ValidationResult) -> str:
    """What the draft refuses in its own sample, one clause per failing column and check."""
    parts = []
    for failure in result.failures[:5]:
        example = failure["examples"][0]["value"] if failure["examples"] else None
        shown = f", e.g. {example!r}" if example is not None else ""
        parts.append(f"column {failure['column']!r} fails {failure['check']} ({failure['count']} case(s){shown})")
    more = f"; and {len(result.failures) - 5} more" if len(result.failures) > 5 else ""
    return "; ".join(parts) + more


def draft_contract(sample: Path, target: str, out: Path, margin: float) -> DataContract:
    """Infer a contract from ``sample``, check the sample against it, then write it to ``out`` atomically."""
    check_destination(out)
    frame = load_source(sample, target)
    contract = infer_contract(frame, target, name=sample.stem, margin=margin)
    result = validate_frame(frame, contract, name=str(sample))
    if not result.valid:
        raise DraftRejectsSample(
            f"the contract drafted from {sample} rejects that sample: {rejection(result)}; fix those values in the "
            f"sample (nothing was written to {out})"
        )
    atomic_write(out, dump_contract(contract, f"Data contract drafted from {sample.name} by `mlrelease infer-schema`"))
    return contract
