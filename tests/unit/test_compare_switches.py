"""`mlrelease compare` names a gate switch the pull request turns laxer (the scanned-image gate), not a stricter one."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.compare import loosened_switches, switch_fields

KEY = "promotion.require_scanned_image"


def params(value: Any) -> dict[str, Any]:
    return {"promotion": {"require_scanned_image": value}} if value is not None else {"promotion": {}}


def test_the_switch_and_its_order_come_from_the_field_that_defines_it() -> None:
    assert switch_fields()[KEY] == (["true", "auto", "false"], "auto")


@pytest.mark.parametrize(
    ("base", "head", "said"),
    [
        ("true", "false", [f"{KEY}: true -> false"]),
        (True, "auto", [f"{KEY}: true -> auto"]),  # YAML booleans, as params.yaml may hold them
        ("auto", False, [f"{KEY}: auto -> false"]),
        ("true", None, [f"{KEY}: true -> auto"]),  # deleted: the code's default applies
        ("false", "true", []),
        ("auto", "auto", []),
        (None, "true", []),
    ],
)
def test_only_a_laxer_switch_is_named(base: Any, head: Any, said: list[str]) -> None:
    assert loosened_switches(params(base), params(head)) == said
