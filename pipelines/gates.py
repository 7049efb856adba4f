"""Gate results: each gate is a name, a measured value, a threshold and a verdict, reported the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Gate:
    """One check: what was measured, against what, and whether it passed."""

    name: str
    value: Any
    threshold: Any
    passed: bool
    detail: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"[{verdict}] {self.name}: value={self.value} threshold={self.threshold} {self.detail}".rstrip()


def at_least(name: str, value: float, minimum: float) -> Gate:
    return Gate(name, round(value, 6), f">= {minimum}", bool(value >= minimum))


def at_most(name: str, value: float, maximum: float) -> Gate:
    return Gate(name, round(value, 6), f"<= {maximum}", bool(value <= maximum))


def gates_payload(stage: str, gates: list[Gate]) -> dict[str, Any]:
    """JSON-ready record of a stage's gates, for reports and registry tags."""
    return {"stage": stage, "passed": all(g.passed for g in gates), "gates": [asdict(g) for g in gates]}
