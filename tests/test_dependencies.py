"""The installed packages are the tested set in ``constraints.txt``, and that set satisfies the ranges
``pyproject.toml`` declares: a drifted package is named, not discovered through a changed result."""
from __future__ import annotations

import re
import warnings
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from tests.paths import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, the version constraints.txt was resolved for


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _pinned() -> dict:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_canonical(name)] = version.strip()
    return pins


def _direct_requirements() -> list:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_installed_versions_are_the_constraints():
    drifted, missing = [], []
    for name, version in _pinned().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if installed != version:
            drifted.append(f"{name} {installed} (constraints.txt: {version})")
    assert not drifted and not missing, (
        f"installed packages differ from constraints.txt: drifted {drifted}, missing {missing}; "
        "`make install` installs the tested set, `make lock` re-resolves it")


def test_every_direct_dependency_is_pinned_within_its_range():
    pins = _pinned()
    for req in _direct_requirements():
        name = _canonical(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pin in constraints.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req}")


def test_results_relevant_pins():
    """The releases fsseg's exactness claims were checked with: torch/torchvision as on this machine
    kind's disk, and OpenCV 4.x for the `hdmnet` augmentation (5.0's warpAffine differs)."""
    pins = _pinned()
    for name in ("torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "timm", "lightning",
                 "torchmetrics", "jsonargparse", "wandb", "gradio", "onnxruntime", "mambapy", "albumentations",
                 "segment-anything", "scipy"):
        assert name in pins, f"{name} is not pinned in constraints.txt"
    assert pins["opencv-python-headless"].startswith("4.")


def test_hdmnet_augmentation_warns_outside_opencv4(monkeypatch):
    import cv2

    from data_modules import hdmnet_augment

    monkeypatch.setattr(hdmnet_augment._warn_unless_opencv4, "said", False, raising=False)
    monkeypatch.setattr(cv2, "__version__", "5.0.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hdmnet_augment.FusedHDMNetAugment(32)  # not bit-equal under any OpenCV: nothing to warn about
    with pytest.warns(UserWarning, match="OpenCV 5.0.0, whose warpAffine differs"):
        hdmnet_augment.HDMNetAugment(32)
    monkeypatch.setattr(hdmnet_augment._warn_unless_opencv4, "said", False)
    monkeypatch.setattr(cv2, "__version__", "4.10.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hdmnet_augment.HDMNetAugment(32)
