"""A trained module for inference: rebuilt from its checkpoint (or the small built-in model), on the
device asked for, at its precision. Used by ``fsseg export``, ``fsseg davis`` and ``fsseg demo-ui``."""

from __future__ import annotations

from typing import Optional

# torch and the models are imported inside the functions: the tools' --help answers at once.

SMALL_MODEL = dict(segmenter={"name": "tiny", "method": "full"}, image_size=112)  # fsseg.models.methods.tiny


def load_module(ckpt_path: Optional[str], small: bool, dinov2_checkpoint: Optional[str] = None):
    """The trained module of ``ckpt_path`` (a ``FewShotModule`` or a ``SpecializeModule``), rebuilt on
    this machine (``fsseg.modules.checkpoints``: the frozen DINOv2 file given now, or found by
    name/sha256; no SAM or adapter file needed)."""
    from fsseg.modules import FewShotModule, SpecializeModule

    if ckpt_path:
        from fsseg.modules.checkpoints import load_module_from_checkpoint

        overrides = {"dinov2_checkpoint": dinov2_checkpoint} if dinov2_checkpoint else {}
        module = load_module_from_checkpoint(ckpt_path, overrides=overrides, map_location="cpu")
        if not isinstance(module, (FewShotModule, SpecializeModule)):
            raise ValueError(f"{ckpt_path}: a {type(module).__name__} checkpoint; fsseg export takes a FewShotModule "
                             "(episodic, with --support_dir) or a SpecializeModule (support-free) checkpoint")
        if isinstance(module, SpecializeModule) and module.student is None:
            raise ValueError(f"{ckpt_path}: a SpecializeModule checkpoint without a specialised student (no class "
                             "names saved); export the last.ckpt of a finished `fsseg fit` specialisation")
        return module.eval()
    import torch

    if not small:
        raise ValueError("fsseg export: give --ckpt_path (a trained checkpoint), or --small for the built-in small "
                         "(untrained) model")
    torch.manual_seed(0)
    return FewShotModule(**SMALL_MODEL).eval()


def inference_device(name: str = "auto"):
    """``auto``: the first visible CUDA GPU, else the CPU; ``cpu``, ``cuda``, ``cuda:N``: that device,
    with a one-line error (naming ``--device``) when it is not there."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"--device {name}: {count} CUDA GPU(s) visible on this machine; use --device cpu "
                             "or auto")
    elif device.type not in ("cpu", "meta"):
        raise ValueError(f"--device {name!r}: fsseg runs on cpu or cuda")
    return device


def place_module(module, device, precision: str = "32"):
    """``module`` (a ``FewShotModule``) moved to ``device``, then its precision applied for that device
    (``fsseg.precision``: 16-mixed is a GPU precision, so the weights move first)."""
    module.to(device)
    module.model.set_precision(precision, device)
    return module
