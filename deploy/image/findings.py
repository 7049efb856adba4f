"""Findings and check results shared by the scanners, the gate, the SARIF writer and the summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["pass", "fail", "warn", "not_checked"]
Level = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    """One problem: which tool and rule, how bad, and where (a repository file and line, or an image path and layer)."""

    tool: str
    rule: str
    level: Level
    message: str
    file: str = ""
    line: int = 0
    layer: str = ""
    in_image: bool = False

    def where(self) -> str:
        """A readable location: ``path:line`` or ``image:/path (layer N)``."""
        if self.in_image:
            spot = f"image:{self.file}" if self.file else "image config"
            return f"{spot} ({self.layer})" if self.layer else spot
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class CheckResult:
    """The outcome of one gate check, with its findings and, when it could not run, the plain reason."""

    name: str
    tool: str
    status: Status
    findings: list[Finding] = field(default_factory=list)
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tool": self.tool,
            "status": self.status,
            "detail": self.detail,
            "findings": [asdict(f) | {"where": f.where()} for f in self.findings],
        }


def gate_status(failing: list[Finding], warning: list[Finding]) -> Status:
    """fail when any finding crosses the policy, warn when only lesser ones exist, else pass."""
    if failing:
        return "fail"
    return "warn" if warning else "pass"
