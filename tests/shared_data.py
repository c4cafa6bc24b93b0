"""Where the real test data lives: ../shared beside the repository, or $FSSEG_SHARED_DATA (its data/ folder).

Tests that read it skip with a reason when it is absent (a user's fresh clone has no ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.paths import REPO

SHARED = Path(os.environ.get("FSSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
GOLDEN = SHARED.parent / "protocol" / "golden"  # HSNet's own episodes (../shared/protocol/golden)
