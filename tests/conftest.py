"""Fixtures shared by the test files: the repository's paths, the real test data under ../shared, the
small-model settings of the command-line tests, and one small checkpoint for the predict tests.

Test files are named after what they test: ``test_<package>_<topic>.py`` with the package ``models``,
``modules`` (fsseg.models, fsseg.modules), ``data_modules``, ``callbacks``, ``cli`` (the ``fsseg`` command
line end to end), ``bench`` or ``fsseg`` (a top-level fsseg module). Tests that run whole training jobs or
take more than a few seconds are marked ``slow``; ``make test-fast`` leaves them out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.cli_utils import TINY_DISTILL, TINY_FEWSHOT
from tests.paths import CONFIGS, REPO
from tests.shared_data import SHARED

if str(REPO) not in sys.path:  # bench/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(items):
    for item in items:  # `-m shared_data` selects every test that reads ../shared, however it asks for it
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root the tests run in."""
    return REPO


@pytest.fixture(scope="session")
def configs() -> Path:
    """The shipped ``lightning_configs`` folder."""
    return CONFIGS


@pytest.fixture
def shared_data():
    """``shared_data("coco128")``: the path of that entry of the real test data (../shared/data or
    $FSSEG_SHARED_DATA), or a skip naming the missing path (a fresh clone has no ../shared)."""

    def need(*parts: str) -> Path:
        path = SHARED.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"shared test data not found at {path} (set FSSEG_SHARED_DATA)")
        return path

    return need


@pytest.fixture
def tiny_fewshot() -> list[str]:
    """``fsseg fit/test`` arguments for the small stage-2 model (seconds per step on a CPU)."""
    return list(TINY_FEWSHOT)


@pytest.fixture
def tiny_distill() -> list[str]:
    """``fsseg fit`` arguments for the small stage-1 (distillation) model."""
    return list(TINY_DISTILL)


@pytest.fixture(scope="session")
def untrained_ckpt(tmp_path_factory):
    """``untrained_ckpt(**FewShotModule arguments)``: the path of that module's checkpoint, seeded with
    0 and written by Lightning, as `fsseg predict/test --ckpt_path` read it."""
    import lightning as L
    import torch

    from fsseg.modules import FewShotModule

    def write(**module_args) -> str:
        path = tmp_path_factory.mktemp("ckpt") / "fewshot.ckpt"
        torch.manual_seed(0)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
        trainer.strategy.connect(FewShotModule(**module_args).eval())
        trainer.save_checkpoint(str(path))
        return str(path)

    return write


@pytest.fixture(scope="session")
def small_ckpt(untrained_ckpt) -> str:
    """An untrained checkpoint of fsseg's small model (``fsseg.inference.SMALL_MODEL``)."""
    from fsseg.inference import SMALL_MODEL

    return untrained_ckpt(**SMALL_MODEL)
