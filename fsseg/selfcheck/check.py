"""One self-check's verdict: a PASS / FAIL / SKIP line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:4s}  {self.name}: {self.detail}"
