"""Crash-safe files: readers see the old content or the new, never half of a write; JSON documents read into
pydantic models with one clear error when unreadable."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

ModelT = TypeVar("ModelT", bound=BaseModel)


def atomic_write(path: Path, text: str, durable: bool = True) -> None:
    """Replace ``path`` with ``text``: temp file in the same folder, fsync, rename, then fsync the folder. A file
    rewritten from other state at every change (``durable=False``) skips the fsyncs: readers still never see half
    of it, and a crash can at worst leave the previous version."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_model(path: Path, model: type[ModelT], what: str, hint: str) -> ModelT | None:
    """``model`` parsed from the JSON file at ``path``; None when there is no file; RuntimeError naming the file,
    ``what`` it is and ``hint`` (what to do) when it cannot be read."""
    if not path.is_file():
        return None
    try:
        return model.model_validate_json(path.read_text())
    except ValueError as exc:
        raise RuntimeError(f"{path}: unreadable {what} ({exc}); {hint}") from exc


def write_model(path: Path, document: BaseModel) -> None:
    """Write ``document`` as indented JSON, atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, document.model_dump_json(indent=2) + "\n")
