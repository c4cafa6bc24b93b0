"""The repository the tests run in, and its shipped configs (the one place that defines them)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "lightning_configs"
