"""Read a saved image (docker-archive tar: manifest.json, config, layer tars) without running it.

Files are attributed to the layer that last wrote them (whiteouts honoured), so a finding can name its layer.
"""

from __future__ import annotations

import fnmatch
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

WHITEOUT = ".wh."


@dataclass
class ImageFiles:
    """What the scanners need from an image: its config, text files to search, packages and cache paths."""

    config: dict[str, Any]
    history: list[str]
    texts: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # path -> (layer index, content)
    paths: dict[str, int] = field(default_factory=dict)  # every regular file path -> layer index
    layer_ids: list[str] = field(default_factory=list)

    def layer_name(self, index: int) -> str:
        """``layer N: <instruction>`` for a finding's location."""
        step = self.history[index] if index < len(self.history) else ""
        short = self.layer_ids[index][:19] if index < len(self.layer_ids) else ""
        return f"layer {index} {short} {step[:80]}".strip()


def _outer_members(archive: Path) -> tuple[dict[str, Any], list[str], list[str], list[str]]:
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config_doc = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
    history = [h.get("created_by", "") for h in config_doc.get("history", []) if not h.get("empty_layer")]
    layers = list(manifest["Layers"])
    diff_ids = list(config_doc.get("rootfs", {}).get("diff_ids", []))
    return config_doc.get("config") or {}, history, layers, diff_ids


def _layer_members(archive: Path, layer: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    with tarfile.open(archive) as outer:
        handle = outer.extractfile(layer)
        if handle is None:
            return
        with tarfile.open(fileobj=handle, mode="r|*") as inner:
            for member in inner:
                yield member, inner


def _norm(name: str) -> str:
    return "/" + str(PurePosixPath(name.lstrip("./"))).lstrip("/")


def _apply_whiteout(files: ImageFiles, path: str) -> None:
    parent, base = path.rsplit("/", 1)
    target = f"{parent}/{base[len(WHITEOUT) :]}"
    if base == ".wh..wh..opq":
        target = parent
    for store in (files.texts, files.paths):
        for key in [k for k in store if k == target or k.startswith(target + "/")]:
            del store[key]


def _wanted(path: str, roots: tuple[str, ...], skip: tuple[str, ...]) -> bool:
    if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
        return False
    return not any(fnmatch.fnmatch(path, pattern) for pattern in skip)


def read_image(
    archive: Path,
    text_roots: tuple[str, ...],
    skip: tuple[str, ...],
    max_text_bytes: int = 1_000_000,
    always: tuple[str, ...] = (),
) -> ImageFiles:
    """Index every file of the image; keep the content of small text files under ``text_roots`` (or ``always``)."""
    config, history, layers, diff_ids = _outer_members(archive)
    files = ImageFiles(config=config, history=history, layer_ids=diff_ids)
    for index, layer in enumerate(layers):
        for member, tar in _layer_members(archive, layer):
            path = _norm(member.name)
            if PurePosixPath(path).name.startswith(WHITEOUT):
                _apply_whiteout(files, path)
                continue
            if not member.isfile():
                continue
            files.paths[path] = index
            keep = path in always or (_wanted(path, text_roots, skip) and member.size <= max_text_bytes)
            if not keep:
                files.texts.pop(path, None)
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if b"\0" in data[:8192]:
                files.texts.pop(path, None)
                continue
            files.texts[path] = (index, data)
    return files
