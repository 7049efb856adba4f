"""Deterministic YAML text for rendered manifests: sorted keys, no line wrapping, no anchors, a comment header."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """A safe dumper that never emits anchors: a shared dict is written out where it is used."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never an alias: every value written where it is used."""
        return True


def dump(doc: Any) -> str:
    """One YAML document as text: keys sorted, long lines (PromQL) kept whole, the same text for the same data."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=1_000_000)


def dump_all(docs: list[Any]) -> str:
    """Several YAML documents as one text, separated by ``---``."""
    return "---\n".join(dump(doc) for doc in docs)


def with_header(lines: list[str], body: str) -> str:
    """``body`` after a comment header of ``lines`` (what wrote it, and from what)."""
    return "".join(f"# {line}\n" for line in lines) + body
