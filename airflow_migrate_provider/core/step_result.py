"""The vocabulary every step kind shares: what happened to a step, and the run-lock check it calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class LockCheck(Protocol):
    """Raises ``LockLost`` when the run no longer holds the plan's lock (checked before each commit)."""

    def check(self) -> None: ...


class NoLockCheck:
    """For callers that hold no lock (tests, a read-only check)."""

    def check(self) -> None:
        return None


@dataclass
class StepResult:
    """What happened to one step, for logs and the run summary."""

    step_id: str
    outcome: str  # applied | already_applied | reverted | verified
    duration_s: float = 0.0
    statements: int = 0
    verified: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # a kind's own summary, for XCom

    def summary(self) -> str:
        """One log line: the step, what happened, how long, and what was verified."""
        checks = "; ".join(one_line(q) for q in self.verified) or "nothing"
        done = f"{self.statements} statement{'s' if self.statements != 1 else ''}; " if self.statements else ""
        return (f"step '{self.step_id}' {self.outcome.replace('_', ' ')} in {self.duration_s:.2f} s "
                f"({done}verified {len(self.verified)}: {checks})")


def one_line(sql: str, width: int = 90) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
