"""Gate results: each gate is a name, a measured value, a threshold and a verdict, reported the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Gate:
    """One check; ``passed`` is None only for an informational gate that could not be evaluated."""

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


class GateFailure(RuntimeError):
    """One or more gates failed; the message lists each failing gate, its value and its threshold."""

    def __init__(self, stage: str, gates: list[Gate]) -> None:
        self.gates = gates
        failed = [g for g in gates if not g.passed]
        super().__init__(f"{stage}: {len(failed)} gate(s) failed:\n" + "\n".join(g.line() for g in failed))


def gates_payload(stage: str, gates: list[Gate]) -> dict[str, Any]:
    """JSON-ready record of a stage's gates, for reports and registry tags."""
    return {"stage": stage, "passed": all(g.passed for g in gates), "gates": [asdict(g) for g in gates]}
