"""Batch scoring's row check: every way a row breaks the data contract gives its reason, and a contract for other
features than the version's is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlrelease.core.modelcard import ModelCard, Standardization
from pipelines.schema import DataContract
from scoring.contract import ContractMismatch, ScoringContract, scoring_contract

CONTRACT = DataContract.model_validate(
    {
        "name": "t",
        "features": [
            {"name": "a", "min": 0.0, "max": 10.0},
            {"name": "n", "dtype": "int", "min": 0, "max": 5, "nullable": True},
            {"name": "u"},
        ],
        "target": {"name": "y", "labels": [0, 1]},
    }
)


def card(names: list[str]) -> ModelCard:
    return ModelCard(
        name="m",
        feature_names=names,
        input_shape=[-1, len(names)],
        classes=["no", "yes"],
        preprocessing=Standardization(mean=[0.0] * len(names), scale=[1.0] * len(names)),
        sha256="0" * 64,
        torch_version="2",
    )


@pytest.fixture
def contract() -> ScoringContract:
    return scoring_contract(CONTRACT, card(["u", "a", "n"]), "t.yaml")


def test_each_broken_value_is_rejected_with_its_reason(contract: ScoringContract) -> None:
    rows = [
        ("1.5", "2", "3", ""),
        (None, "2", "3", "a: missing"),
        ("abc", "2", "3", "a: not a number"),
        ("inf", "2", "3", "a: infinite"),
        ("-1", "2", "3", "a: below min 0.0"),
        ("11", "2", "3", "a: above max 10.0"),
        ("1", "2.5", "3", "n: not an integer"),
        ("1", None, "3", "n: missing"),  # nullable, but the model needs a value
        ("1", "2", "1e39", "u: beyond the float32 range (+/-3.40282e+38)"),
        ("12", "9", "nan", "u: missing; a: above max 10.0; n: above max 5.0"),  # every feature's, in the card's order
    ]
    frame = pd.DataFrame([r[:3] for r in rows], columns=["a", "n", "u"], dtype=object)
    reasons, matrix = contract.reasons(frame)
    assert reasons.tolist() == [r[3] for r in rows]
    assert matrix.shape == (len(rows), 3)
    np.testing.assert_array_equal(matrix[0], [3.0, 1.5, 2.0])  # the card's order: u, a, n


def test_typed_columns_are_checked_as_they_are(contract: ScoringContract) -> None:
    frame = pd.DataFrame({"a": [1.0, np.nan, 10.0], "n": [0, 5, 1], "u": [-1e30, 0.0, np.inf]})
    reasons, _ = contract.reasons(frame)
    assert reasons.tolist() == ["", "a: missing", "u: infinite"]


def test_the_rules_follow_the_cards_feature_order(contract: ScoringContract) -> None:
    assert contract.feature_names == ["u", "a", "n"]
    assert contract.target == "y" and contract.missing_columns(["a", "y"]) == ["u", "n"]


def test_a_contract_for_other_features_is_refused() -> None:
    with pytest.raises(ContractMismatch) as refused:
        scoring_contract(CONTRACT, card(["a", "n", "v"]), "t.yaml")
    said = str(refused.value)
    assert "missing: ['v']" in said and "not the model's: ['u']" in said and "--schema" in said
